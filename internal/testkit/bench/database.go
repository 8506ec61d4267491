package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hermes-cloud/migrator/internal/testkit/pgcluster"
	"github.com/hermes-cloud/migrator/store"
)

// The scenario's database: its own PostgreSQL (pgcluster), a throwaway
// database on a given server, or a given one; the schema upgrade; and the
// server's clock skew, so its timestamps can be placed on our timeline.

// clockSkew estimates the database server's clock minus ours, so its
// now() timestamps can be placed on our timeline (0 on the same host).
func clockSkew(ctx context.Context, db *pgxpool.Pool) (time.Duration, error) {
	best, skew := time.Duration(1<<62), time.Duration(0)
	for range 5 {
		var at time.Time
		before := time.Now()
		if err := db.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&at); err != nil {
			return 0, fmt.Errorf("read the database clock: %w", err)
		}
		rtt := time.Since(before)
		if rtt < best {
			best, skew = rtt, at.Sub(before.Add(rtt/2))
		}
	}
	return skew, nil
}

func upgrade(ctx context.Context, dsn string) error {
	pool, err := store.Open(ctx, dsn, store.WithMaxConns(2))
	if err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	defer pool.Close()
	if _, err := store.Upgrade(ctx, pool, slog.New(slog.DiscardHandler)); err != nil {
		return fmt.Errorf("upgrade schema: %w", err)
	}
	return nil
}

// freshDatabase creates database name on cluster with migrator's schema,
// for one run of a scenario that starts its own server; drop removes it.
func freshDatabase(ctx context.Context, cluster *pgcluster.Cluster, name string) (dsn string, drop func(), err error) {
	admin, err := store.Open(ctx, cluster.DSN("postgres"), store.WithMaxConns(2))
	if err != nil {
		return "", nil, fmt.Errorf("open server: %w", err)
	}
	if _, err := admin.Exec(ctx, `CREATE DATABASE `+pgx.Identifier{name}.Sanitize()); err != nil {
		admin.Close()
		return "", nil, fmt.Errorf("create database %s: %w", name, err)
	}
	drop = func() {
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = admin.Exec(dctx, `DROP DATABASE IF EXISTS `+pgx.Identifier{name}.Sanitize()+` WITH (FORCE)`)
		admin.Close()
	}
	dsn = cluster.DSN(name)
	if err := upgrade(ctx, dsn); err != nil {
		drop()
		return "", nil, err
	}
	return dsn, drop, nil
}

// database returns the DSN of a database for the scenario, the server's
// PID when it is the benchmark's own (else 0), and how to get rid of it.
func database(ctx context.Context, cfg Config) (string, int, func(), error) {
	if cfg.DatabaseURL != "" {
		return cfg.DatabaseURL, 0, func() {}, nil
	}
	if cfg.ServerURL != "" {
		dsn, cleanup, err := throwawayDatabase(ctx, cfg.ServerURL)
		return dsn, 0, cleanup, err
	}
	dir, err := os.MkdirTemp("", "migrator-bench-")
	if err != nil {
		return "", 0, nil, err
	}
	cluster, err := pgcluster.Start(dir)
	if err != nil {
		os.RemoveAll(dir)
		return "", 0, nil, fmt.Errorf("start PostgreSQL: %w", err)
	}
	stop := func() {
		_ = cluster.Stop()
		os.RemoveAll(dir)
	}
	admin, err := store.Open(ctx, cluster.DSN("postgres"), store.WithMaxConns(1))
	if err == nil {
		_, err = admin.Exec(ctx, `CREATE DATABASE bench`)
		admin.Close()
	}
	if err != nil {
		stop()
		return "", 0, nil, fmt.Errorf("create database: %w", err)
	}
	return cluster.DSN("bench"), postmasterPID(filepath.Join(cluster.Dir(), "data")), stop, nil
}

func throwawayDatabase(ctx context.Context, server string) (string, func(), error) {
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "migrator_bench_" + hex.EncodeToString(b[:])
	dsn, err := withDatabase(server, name)
	if err != nil {
		return "", nil, err
	}
	admin, err := store.Open(ctx, server, store.WithMaxConns(1))
	if err != nil {
		return "", nil, fmt.Errorf("open server: %w", err)
	}
	if _, err := admin.Exec(ctx, `CREATE DATABASE `+pgx.Identifier{name}.Sanitize()); err != nil {
		admin.Close()
		return "", nil, fmt.Errorf("create database %s: %w", name, err)
	}
	return dsn, func() {
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = admin.Exec(dctx, `DROP DATABASE IF EXISTS `+pgx.Identifier{name}.Sanitize()+` WITH (FORCE)`)
		admin.Close()
	}, nil
}

// withDatabase returns server's connection string naming database name.
func withDatabase(server, name string) (string, error) {
	if strings.HasPrefix(server, "postgres://") || strings.HasPrefix(server, "postgresql://") {
		u, err := url.Parse(server)
		if err != nil {
			return "", errors.New("server URL: cannot parse it")
		}
		u.Path = "/" + name
		return u.String(), nil
	}
	fields := slices.DeleteFunc(strings.Fields(server), func(f string) bool { return strings.HasPrefix(f, "dbname=") })
	return strings.Join(append(fields, "dbname="+name), " "), nil
}

// withAppName sets a connection URL's application_name (what
// pg_stat_activity shows for its connections).
func withAppName(dsn, name string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return dsn
	}
	q := u.Query()
	q.Set("application_name", name)
	u.RawQuery = q.Encode()
	return u.String()
}
