package storetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hermes-cloud/migrator/internal/testkit/pgcluster"
	"github.com/hermes-cloud/migrator/store"
)

// EnvDatabaseURL names the variable that points the tests at an existing
// server instead of a throwaway cluster.
const EnvDatabaseURL = "TEST_DATABASE_URL"

// Cluster is a throwaway PostgreSQL server (see internal/testkit/pgcluster).
type Cluster = pgcluster.Cluster

// StartCluster starts a cluster of its own in dir, for tests that stop or
// restart the server (never do that to the shared one). dir and its
// parents must be reachable by the OS user postgres when running as root:
// TempClusterDir gives such a directory.
func StartCluster(dir string) (*Cluster, error) { return pgcluster.Start(dir) }

// TempClusterDir returns a fresh directory for StartCluster, removed when
// the test ends (t.TempDir's is private to root, too private for postgres).
func TempClusterDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgcluster-")
	if err != nil {
		t.Fatalf("storetest: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

const opTimeout = 60 * time.Second

var (
	mainCalled atomic.Bool
	startOnce  sync.Once
	shared     *harness
	startErr   error
)

// harness is the per-binary server and template.
type harness struct {
	cluster  *pgcluster.Cluster // nil when TEST_DATABASE_URL is used
	dir      string             // cluster directory, removed at exit
	adminDSN string
	admin    *pgxpool.Pool
	prefix   string // database names unique to this binary
	seq      atomic.Int64

	tmplOnce sync.Once
	tmpl     string
	tmplErr  error
}

// Main runs the tests, then stops the cluster and removes its directory
// (also when tests failed), and exits. Call it from TestMain.
func Main(m *testing.M) {
	mainCalled.Store(true)
	code := m.Run()
	if shared != nil {
		if err := shared.close(); err != nil {
			fmt.Fprintf(os.Stderr, "storetest: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// get starts the harness on first use, failing t with one line if it cannot.
func get(t testing.TB) *harness {
	t.Helper()
	if !mainCalled.Load() {
		t.Fatal("storetest: call storetest.Main(m) from TestMain, so the cluster is stopped when the tests end")
	}
	startOnce.Do(func() { shared, startErr = start() })
	if startErr != nil {
		t.Fatalf("storetest: %v", startErr)
	}
	return shared
}

func start() (*harness, error) {
	var b [3]byte
	_, _ = rand.Read(b[:])
	h := &harness{prefix: fmt.Sprintf("st%d_%s", os.Getpid(), hex.EncodeToString(b[:]))}
	if dsn := os.Getenv(EnvDatabaseURL); dsn != "" {
		h.adminDSN = dsn
	} else {
		removeStaleDirs()
		dir, err := os.MkdirTemp("", fmt.Sprintf("storetest-%d-", os.Getpid()))
		if err != nil {
			return nil, err
		}
		h.dir = dir
		if h.cluster, err = pgcluster.Start(dir); err != nil {
			os.RemoveAll(dir)
			if errors.Is(err, pgcluster.ErrNoServerBinaries) {
				return nil, err // already the one line saying what to install
			}
			return nil, fmt.Errorf("start PostgreSQL: %w", err)
		}
		h.adminDSN = h.cluster.DSN("postgres")
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	admin, err := store.Open(ctx, h.adminDSN, store.WithMaxConns(4))
	if err != nil {
		h.close()
		if h.cluster == nil {
			return nil, fmt.Errorf("%s: %w", EnvDatabaseURL, err)
		}
		return nil, err
	}
	h.admin = admin
	return h, nil
}

// removeStaleDirs removes cluster directories left by test binaries that
// died without cleaning up (a panic or a -timeout kills them before Main's
// clean-up; their server quits with them).
func removeStaleDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "storetest-*-*"))
	for _, d := range dirs {
		parts := strings.SplitN(filepath.Base(d), "-", 3)
		pid, err := strconv.Atoi(parts[1])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			os.RemoveAll(d)
		}
	}
}

func (h *harness) close() error {
	var errs []error
	if h.admin != nil {
		if h.tmpl != "" && h.cluster == nil {
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			errs = append(errs, dropDB(ctx, h.admin, h.tmpl))
			cancel()
		}
		h.admin.Close()
	}
	if h.cluster != nil {
		errs = append(errs, h.cluster.Stop())
	}
	if h.dir != "" {
		errs = append(errs, os.RemoveAll(h.dir))
	}
	return errors.Join(errs...)
}

// template creates and migrates the template database once.
func (h *harness) template(t testing.TB) string {
	t.Helper()
	h.tmplOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		name := h.prefix + "_tmpl"
		if err := createDB(ctx, h.admin, name, ""); err != nil {
			h.tmplErr = err
			return
		}
		h.tmpl = name
		pool, err := store.Open(ctx, h.dsn(name))
		if err != nil {
			h.tmplErr = err
			return
		}
		// Clones need the template without sessions: close before cloning.
		defer pool.Close()
		if _, err := store.Upgrade(ctx, pool, nil); err != nil {
			h.tmplErr = fmt.Errorf("migrate the template database: %w", err)
		}
	})
	if h.tmplErr != nil {
		t.Fatalf("storetest: %v", h.tmplErr)
	}
	return h.tmpl
}

// dsn is the connection string of database name on the harness' server.
func (h *harness) dsn(name string) string {
	if h.cluster != nil {
		return h.cluster.DSN(name)
	}
	return withDatabase(h.adminDSN, name)
}

// withDatabase replaces the database of a URL or keyword/value DSN.
func withDatabase(dsn, name string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		if u, err := url.Parse(dsn); err == nil {
			u.Path = "/" + name
			u.RawPath = ""
			return u.String()
		}
	}
	// In keyword/value form the last setting wins.
	return dsn + " dbname=" + name
}

func createDB(ctx context.Context, admin *pgxpool.Pool, name, template string) error {
	sql := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize()
	if template != "" {
		sql += " TEMPLATE " + pgx.Identifier{template}.Sanitize()
	}
	if _, err := admin.Exec(ctx, sql); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

func dropDB(ctx context.Context, admin *pgxpool.Pool, name string) error {
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	return nil
}

// newDB creates a database for t (from template, or empty) and its pool,
// both removed when t ends.
func (h *harness) newDB(t testing.TB, template string) (string, *pgxpool.Pool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	name := fmt.Sprintf("%s_%d", h.prefix, h.seq.Add(1))
	if err := createDB(ctx, h.admin, name, template); err != nil {
		t.Fatalf("storetest: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		if err := dropDB(ctx, h.admin, name); err != nil {
			t.Errorf("storetest: %v", err)
		}
	})
	dsn := h.dsn(name)
	pool, err := store.Open(ctx, dsn)
	if err != nil {
		t.Fatalf("storetest: %v", err)
	}
	t.Cleanup(pool.Close) // runs before the drop: cleanups run last-in first-out
	return dsn, pool
}

// NewDB returns a migrated database of t's own: its connection string and a
// pool, both gone when t ends.
func NewDB(t testing.TB) (dsn string, pool *pgxpool.Pool) {
	t.Helper()
	h := get(t)
	return h.newDB(t, h.template(t))
}

// NewEmptyDB returns an empty (unmigrated) database of t's own, for tests
// of the upgrade itself.
func NewEmptyDB(t testing.TB) (dsn string, pool *pgxpool.Pool) {
	t.Helper()
	return get(t).newDB(t, "")
}

// AdminDSN is the connection string of the server's maintenance database as
// a role that may create databases. Do not drop what you did not create.
func AdminDSN(t testing.TB) string {
	t.Helper()
	return get(t).adminDSN
}
