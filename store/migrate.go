package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/hermes-cloud/migrator/migrations"
)

// Schema migrations. River's own migrations (rivermigrate, recorded in its
// table river_migration) are applied first, then ours: the numbered,
// forward-only files of package migrations, each in its own transaction and
// recorded in schema_migrations with a checksum of its text. The whole
// upgrade holds a session-level advisory lock, so concurrent upgrades (two
// replicas starting at once) run one after the other and the second finds
// nothing to do.

// SchemaLockKey is the pg_advisory_lock key held for a whole upgrade
// ("migrator" in ASCII).
const SchemaLockKey int64 = 0x6d69677261746f72

// schemaMigrationsDDL creates the table that records our applied files.
const schemaMigrationsDDL = `CREATE TABLE IF NOT EXISTS schema_migrations (
	version    integer PRIMARY KEY,
	name       text NOT NULL,
	checksum   text NOT NULL,
	applied_at timestamptz NOT NULL DEFAULT now()
)`

// SchemaVersion names one migration: version 1, name "init" is 001_init.sql.
type SchemaVersion struct {
	Version int
	Name    string
}

func (v SchemaVersion) String() string { return fmt.Sprintf("%03d_%s", v.Version, v.Name) }

// SchemaFile is one of our migration files.
type SchemaFile struct {
	SchemaVersion
	Checksum string // hex SHA-256 of SQL
	SQL      string
}

// AppliedVersion is a migration recorded as applied in the database.
type AppliedVersion struct {
	SchemaVersion
	AppliedAt time.Time
	// Modified: the file's text differs from what was applied (ours only).
	Modified bool
	// Unknown: applied by a newer binary; this one has no such file.
	Unknown bool
}

// SchemaStatus is the state of one migration line (River's or ours).
type SchemaStatus struct {
	Applied []AppliedVersion // ordered by version
	Pending []SchemaVersion  // ordered by version
}

// StatusReport is what `migrator db status` shows.
type StatusReport struct {
	River SchemaStatus
	Ours  SchemaStatus
}

// PendingCount is the number of migrations not applied yet, both lines.
func (r StatusReport) PendingCount() int { return len(r.River.Pending) + len(r.Ours.Pending) }

// Current reports whether nothing is pending and no applied file was edited.
func (r StatusReport) Current() bool {
	if r.PendingCount() > 0 {
		return false
	}
	for _, a := range r.Ours.Applied {
		if a.Modified {
			return false
		}
	}
	return true
}

// UpgradeResult lists what one Upgrade applied.
type UpgradeResult struct {
	River []SchemaVersion
	Ours  []SchemaVersion
}

// NoOp reports whether the upgrade found the schema current.
func (r UpgradeResult) NoOp() bool { return len(r.River) == 0 && len(r.Ours) == 0 }

// ChecksumMismatchError: an applied migration file was edited afterwards.
type ChecksumMismatchError struct {
	SchemaVersion
	AppliedChecksum string
	FileChecksum    string
}

func (e *ChecksumMismatchError) Error() string {
	return fmt.Sprintf("migration %s was edited after it was applied (checksum %.12s in the database, %.12s in this binary): applied migrations must not change; add a new migration instead", e.SchemaVersion, e.AppliedChecksum, e.FileChecksum)
}

// OutOfOrderError: a pending migration is numbered below an applied one.
type OutOfOrderError struct {
	Pending SchemaVersion
	Applied SchemaVersion
}

func (e *OutOfOrderError) Error() string {
	return fmt.Sprintf("migration %s is pending but the later %s is already applied: number new migrations above the last applied one", e.Pending, e.Applied)
}

var schemaFileName = regexp.MustCompile(`^([0-9]{3,})_([a-z0-9_]+)\.sql$`)

// SchemaFiles returns our migration files ordered by version.
func SchemaFiles() ([]SchemaFile, error) { return schemaFiles(migrations.FS) }

func schemaFiles(fsys fs.FS) ([]SchemaFile, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("store: read migration files: %w", err)
	}
	var files []SchemaFile
	seen := map[int]string{}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		m := schemaFileName.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("store: migration file %q: name must be NNN_name.sql (digits, underscore, lower-case name)", e.Name())
		}
		v, err := strconv.Atoi(m[1])
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("store: migration file %q: version must be a positive number", e.Name())
		}
		if other, dup := seen[v]; dup {
			return nil, fmt.Errorf("store: migration files %q and %q share version %d", other, e.Name(), v)
		}
		seen[v] = e.Name()
		b, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, fmt.Errorf("store: read migration file %s: %w", e.Name(), err)
		}
		sum := sha256.Sum256(b)
		files = append(files, SchemaFile{
			SchemaVersion: SchemaVersion{Version: v, Name: m[2]},
			Checksum:      hex.EncodeToString(sum[:]),
			SQL:           string(b),
		})
	}
	slices.SortFunc(files, func(a, b SchemaFile) int { return a.Version - b.Version })
	return files, nil
}

// Upgrade applies River's pending migrations, then ours, under the schema
// lock. Running it on a current schema does nothing. The pool needs at
// least two connections: one holds the lock while River migrates through
// the pool.
func Upgrade(ctx context.Context, pool *pgxpool.Pool, logger *slog.Logger) (UpgradeResult, error) {
	return upgrade(ctx, pool, logger, migrations.FS)
}

func upgrade(ctx context.Context, pool *pgxpool.Pool, logger *slog.Logger, fsys fs.FS) (res UpgradeResult, err error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	files, err := schemaFiles(fsys) // a broken file set fails before any change
	if err != nil {
		return res, err
	}
	if pool.Config().MaxConns < 2 {
		return res, errors.New("store: upgrade needs a pool of at least 2 connections (one holds the schema lock)")
	}
	river, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Logger: logger})
	if err != nil {
		return res, fmt.Errorf("store: river migrator: %w", err)
	}

	conn, err := pool.Acquire(ctx)
	if err != nil {
		return res, fmt.Errorf("store: upgrade: acquire connection: %w", err)
	}
	defer conn.Release()
	if err := lockSchema(ctx, conn, logger); err != nil {
		return res, err
	}
	defer unlockSchema(ctx, conn, logger)

	rr, err := river.Migrate(ctx, rivermigrate.DirectionUp, nil)
	if err != nil {
		return res, fmt.Errorf("store: apply River migrations: %w", err)
	}
	for _, v := range rr.Versions {
		res.River = append(res.River, SchemaVersion{Version: v.Version, Name: v.Name})
	}

	if _, err := conn.Exec(ctx, schemaMigrationsDDL); err != nil {
		return res, fmt.Errorf("store: create schema_migrations: %w", err)
	}
	applied, err := readApplied(ctx, conn)
	if err != nil {
		return res, err
	}
	pending, err := pendingFiles(files, applied)
	if err != nil {
		return res, err
	}
	for _, f := range pending {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			// No arguments: pgx uses the simple protocol, so a file may
			// hold many statements.
			if _, err := tx.Exec(ctx, f.SQL); err != nil {
				return err
			}
			_, err := tx.Exec(ctx,
				`INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)`,
				f.Version, f.Name, f.Checksum)
			return err
		})
		if err != nil {
			return res, fmt.Errorf("store: apply migration %s: %w", f.SchemaVersion, err)
		}
		logger.InfoContext(ctx, "applied migration", slog.Int("version", f.Version), slog.String("name", f.Name))
		res.Ours = append(res.Ours, f.SchemaVersion)
	}
	return res, nil
}

// lockSchema takes the session-level advisory lock, waiting (bounded by
// ctx) while another upgrade holds it.
func lockSchema(ctx context.Context, conn *pgxpool.Conn, logger *slog.Logger) error {
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, SchemaLockKey).Scan(&got); err != nil {
		return fmt.Errorf("store: take schema lock: %w", err)
	}
	if got {
		return nil
	}
	logger.WarnContext(ctx, "another schema upgrade is running; waiting for it")
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, SchemaLockKey); err != nil {
		return fmt.Errorf("store: wait for schema lock: %w", err)
	}
	return nil
}

// unlockSchema releases the lock even when ctx is done; if it cannot, it
// closes the connection, which releases every session lock it held.
func unlockSchema(ctx context.Context, conn *pgxpool.Conn, logger *slog.Logger) {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := conn.Exec(uctx, `SELECT pg_advisory_unlock($1)`, SchemaLockKey); err != nil {
		logger.WarnContext(ctx, "release schema lock failed; closing its connection", slog.Any("error", err))
		_ = conn.Conn().Close(uctx)
	}
}

type appliedRow struct {
	AppliedVersion
	checksum string
}

// rowQuerier is a pool or a connection.
type rowQuerier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func readApplied(ctx context.Context, db rowQuerier) ([]appliedRow, error) {
	rows, err := db.Query(ctx, `SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version`)
	if err != nil {
		return nil, fmt.Errorf("store: read schema_migrations: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (appliedRow, error) {
		var a appliedRow
		err := r.Scan(&a.Version, &a.Name, &a.checksum, &a.AppliedAt)
		return a, err
	})
	if err != nil {
		return nil, fmt.Errorf("store: read schema_migrations: %w", err)
	}
	return out, nil
}

// pendingFiles checks the applied files are unchanged and returns the files
// still to apply, refusing one numbered below an applied migration.
func pendingFiles(files []SchemaFile, applied []appliedRow) ([]SchemaFile, error) {
	byVersion := map[int]appliedRow{}
	var last SchemaVersion
	for _, a := range applied {
		byVersion[a.Version] = a
		if a.Version > last.Version {
			last = a.SchemaVersion
		}
	}
	var pending []SchemaFile
	for _, f := range files {
		a, ok := byVersion[f.Version]
		switch {
		case ok && a.checksum != f.Checksum:
			return nil, &ChecksumMismatchError{SchemaVersion: f.SchemaVersion, AppliedChecksum: a.checksum, FileChecksum: f.Checksum}
		case ok:
		case f.Version < last.Version:
			return nil, &OutOfOrderError{Pending: f.SchemaVersion, Applied: last}
		default:
			pending = append(pending, f)
		}
	}
	return pending, nil
}

// Status reports what is applied and what is pending, for River's
// migrations and ours. It changes nothing and takes no lock.
func Status(ctx context.Context, pool *pgxpool.Pool) (StatusReport, error) {
	return status(ctx, pool, migrations.FS)
}

func status(ctx context.Context, pool *pgxpool.Pool, fsys fs.FS) (StatusReport, error) {
	var rep StatusReport
	files, err := schemaFiles(fsys)
	if err != nil {
		return rep, err
	}
	if rep.River, err = riverStatus(ctx, pool); err != nil {
		return rep, err
	}

	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('schema_migrations') IS NOT NULL`).Scan(&exists); err != nil {
		return rep, fmt.Errorf("store: look for schema_migrations: %w", err)
	}
	var applied []appliedRow
	if exists {
		if applied, err = readApplied(ctx, pool); err != nil {
			return rep, err
		}
	}
	byVersion := map[int]SchemaFile{}
	for _, f := range files {
		byVersion[f.Version] = f
	}
	done := map[int]bool{}
	for _, a := range applied {
		f, known := byVersion[a.Version]
		a.Unknown = !known
		a.Modified = known && f.Checksum != a.checksum
		rep.Ours.Applied = append(rep.Ours.Applied, a.AppliedVersion)
		done[a.Version] = true
	}
	for _, f := range files {
		if !done[f.Version] {
			rep.Ours.Pending = append(rep.Ours.Pending, f.SchemaVersion)
		}
	}
	return rep, nil
}

func riverStatus(ctx context.Context, pool *pgxpool.Pool) (SchemaStatus, error) {
	var st SchemaStatus
	river, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return st, fmt.Errorf("store: river migrator: %w", err)
	}
	existing, err := river.ExistingVersions(ctx)
	if err != nil {
		return st, fmt.Errorf("store: read River's applied migrations: %w", err)
	}
	var times map[int]time.Time
	if len(existing) > 0 {
		if times, err = riverAppliedTimes(ctx, pool); err != nil {
			return st, err
		}
	}
	done := map[int]bool{}
	for _, m := range existing {
		done[m.Version] = true
		st.Applied = append(st.Applied, AppliedVersion{
			SchemaVersion: SchemaVersion{Version: m.Version, Name: m.Name},
			AppliedAt:     times[m.Version],
		})
	}
	for _, m := range river.AllVersions() {
		if !done[m.Version] {
			st.Pending = append(st.Pending, SchemaVersion{Version: m.Version, Name: m.Name})
		}
	}
	return st, nil
}

// riverAppliedTimes reads when River recorded each version. Its table
// gained the line column in River's version 5; reading the rows as JSON
// works with and without it.
func riverAppliedTimes(ctx context.Context, pool *pgxpool.Pool) (map[int]time.Time, error) {
	rows, err := pool.Query(ctx, `
		SELECT (to_jsonb(m)->>'version')::int, (to_jsonb(m)->>'created_at')::timestamptz
		FROM river_migration m
		WHERE coalesce(to_jsonb(m)->>'line', 'main') = 'main'`)
	if err != nil {
		return nil, fmt.Errorf("store: read river_migration: %w", err)
	}
	out := map[int]time.Time{}
	var v int
	var at time.Time
	_, err = pgx.ForEachRow(rows, []any{&v, &at}, func() error { out[v] = at; return nil })
	if err != nil {
		return nil, fmt.Errorf("store: read river_migration: %w", err)
	}
	return out, nil
}

// SchemaCurrent reports whether every migration this binary knows, River's
// and ours, is applied and unchanged (for readiness checks).
func SchemaCurrent(ctx context.Context, pool *pgxpool.Pool) (bool, error) {
	rep, err := Status(ctx, pool)
	if err != nil {
		return false, err
	}
	return rep.Current(), nil
}
