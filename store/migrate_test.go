package store_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hermes-cloud/migrator/store"
	"github.com/hermes-cloud/migrator/store/storetest"
)

// TestMain is the store package's only one: every store test may use
// storetest.NewDB.
func TestMain(m *testing.M) { storetest.Main(m) }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustFiles(t *testing.T) []store.SchemaFile {
	t.Helper()
	files, err := store.SchemaFiles()
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no migration files embedded")
	}
	return files
}

func count(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func versions(vs []store.SchemaVersion) []int {
	out := make([]int, len(vs))
	for i, v := range vs {
		out[i] = v.Version
	}
	return out
}

func TestUpgradeTwiceIsNoOp(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	_, pool := storetest.NewEmptyDB(t)
	files := mustFiles(t)

	first, err := store.Upgrade(ctx, pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(first.River) == 0 {
		t.Error("first upgrade applied no River migration")
	}
	if len(first.Ours) != len(files) {
		t.Errorf("first upgrade applied %v, want all %d files", versions(first.Ours), len(files))
	}
	if first.NoOp() {
		t.Error("first upgrade reported no-op")
	}
	riverRows := count(t, pool, `SELECT count(*) FROM river_migration`)
	if riverRows != len(first.River) {
		t.Errorf("river_migration has %d rows, upgrade reported %d", riverRows, len(first.River))
	}

	second, err := store.Upgrade(ctx, pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !second.NoOp() {
		t.Errorf("second upgrade applied %+v, want nothing", second)
	}
	if n := count(t, pool, `SELECT count(*) FROM schema_migrations`); n != len(files) {
		t.Errorf("schema_migrations has %d rows, want %d", n, len(files))
	}
	if n := count(t, pool, `SELECT count(*) FROM river_migration`); n != riverRows {
		t.Errorf("river_migration went from %d to %d rows", riverRows, n)
	}
}

func TestConcurrentUpgrades(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	dsn, check := storetest.NewEmptyDB(t)

	const n = 3
	pools := make([]*pgxpool.Pool, n)
	for i := range pools {
		p, err := store.Open(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		pools[i] = p
	}
	results := make([]store.UpgradeResult, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range pools {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			results[i], errs[i] = store.Upgrade(ctx, pools[i], nil)
		}()
	}
	close(start)
	wg.Wait()

	riverApplied := map[int]int{}
	oursApplied := map[int]int{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("upgrade %d: %v", i, errs[i])
		}
		for _, v := range results[i].River {
			riverApplied[v.Version]++
		}
		for _, v := range results[i].Ours {
			oursApplied[v.Version]++
		}
	}
	// Each version was applied by exactly one of the upgrades.
	files := mustFiles(t)
	for _, f := range files {
		if oursApplied[f.Version] != 1 {
			t.Errorf("migration %s applied %d times", f.SchemaVersion, oursApplied[f.Version])
		}
	}
	for v, c := range riverApplied {
		if c != 1 {
			t.Errorf("River migration %d applied %d times", v, c)
		}
	}
	if d := count(t, check, `SELECT count(*) FROM (SELECT version FROM schema_migrations GROUP BY version HAVING count(*) > 1) d`); d != 0 {
		t.Errorf("%d duplicated versions in schema_migrations", d)
	}
	if got := count(t, check, `SELECT count(*) FROM schema_migrations`); got != len(files) {
		t.Errorf("schema_migrations has %d rows, want %d", got, len(files))
	}
	if got := count(t, check, `SELECT count(DISTINCT version) FROM river_migration`); got != count(t, check, `SELECT count(*) FROM river_migration`) || got != len(riverApplied) {
		t.Errorf("river_migration: %d distinct versions, %d applied", got, len(riverApplied))
	}
	if ok, err := store.SchemaCurrent(ctx, check); err != nil || !ok {
		t.Errorf("SchemaCurrent = %v, %v after concurrent upgrades", ok, err)
	}
}

func TestStatusBeforeAndAfterUpgrade(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	_, pool := storetest.NewEmptyDB(t)
	files := mustFiles(t)

	before, err := store.Status(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if len(before.River.Applied) != 0 || len(before.Ours.Applied) != 0 {
		t.Errorf("fresh database reports applied migrations: %+v", before)
	}
	if len(before.River.Pending) == 0 || len(before.Ours.Pending) != len(files) {
		t.Errorf("pending: River %d, ours %v; want all", len(before.River.Pending), versions(before.Ours.Pending))
	}
	if before.Current() {
		t.Error("fresh database reported current")
	}
	if ok, err := store.SchemaCurrent(ctx, pool); err != nil || ok {
		t.Errorf("SchemaCurrent on a fresh database = %v, %v", ok, err)
	}
	riverPending := len(before.River.Pending)

	var dbNow time.Time
	if err := pool.QueryRow(ctx, `SELECT now()`).Scan(&dbNow); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Upgrade(ctx, pool, nil); err != nil {
		t.Fatal(err)
	}
	after, err := store.Status(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if after.PendingCount() != 0 || !after.Current() {
		t.Errorf("after upgrade: pending %d, current %v", after.PendingCount(), after.Current())
	}
	if len(after.River.Applied) != riverPending || len(after.Ours.Applied) != len(files) {
		t.Errorf("applied: River %d (want %d), ours %d (want %d)", len(after.River.Applied), riverPending, len(after.Ours.Applied), len(files))
	}
	for i, a := range after.Ours.Applied {
		if a.SchemaVersion != files[i].SchemaVersion || a.Modified || a.Unknown {
			t.Errorf("ours[%d] = %+v, want %v unmodified", i, a, files[i].SchemaVersion)
		}
	}
	for _, a := range append(after.River.Applied, after.Ours.Applied...) {
		if a.Name == "" || a.AppliedAt.Before(dbNow.Add(-time.Minute)) || a.AppliedAt.After(dbNow.Add(time.Minute)) {
			t.Errorf("applied %+v: want a name and an applied_at near %v", a, dbNow)
		}
	}
	if ok, err := store.SchemaCurrent(ctx, pool); err != nil || !ok {
		t.Errorf("SchemaCurrent after upgrade = %v, %v", ok, err)
	}
}

func TestEditedMigrationIsRefused(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	_, pool := storetest.NewEmptyDB(t)
	v1 := fstest.MapFS{"001_first.sql": {Data: []byte("CREATE TABLE first (id int);")}}
	if _, err := store.UpgradeFS(ctx, pool, nil, v1); err != nil {
		t.Fatal(err)
	}
	edited := fstest.MapFS{
		"001_first.sql":  {Data: []byte("CREATE TABLE first (id bigint);")},
		"002_second.sql": {Data: []byte("CREATE TABLE second (id int);")},
	}
	_, err := store.UpgradeFS(ctx, pool, nil, edited)
	var cm *store.ChecksumMismatchError
	if !errors.As(err, &cm) || cm.Version != 1 {
		t.Fatalf("err = %v, want a checksum mismatch on 001", err)
	}
	if !strings.Contains(err.Error(), "001_first was edited after it was applied") {
		t.Errorf("unclear message: %v", err)
	}
	if n := count(t, pool, `SELECT count(*) FROM schema_migrations`); n != 1 {
		t.Errorf("the refused upgrade applied something: %d rows", n)
	}
	rep, err := store.StatusFS(ctx, pool, edited)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Ours.Applied) != 1 || !rep.Ours.Applied[0].Modified || rep.Current() {
		t.Errorf("status = %+v, want 001 modified and not current", rep.Ours)
	}
}

func TestOutOfOrderMigrationIsRefused(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	_, pool := storetest.NewEmptyDB(t)
	a := fstest.MapFS{
		"001_a.sql": {Data: []byte("SELECT 1;")},
		"003_c.sql": {Data: []byte("SELECT 3;")},
	}
	if _, err := store.UpgradeFS(ctx, pool, nil, a); err != nil {
		t.Fatal(err)
	}
	b := fstest.MapFS{
		"001_a.sql": a["001_a.sql"],
		"002_b.sql": {Data: []byte("SELECT 2;")},
		"003_c.sql": a["003_c.sql"],
	}
	_, err := store.UpgradeFS(ctx, pool, nil, b)
	var oo *store.OutOfOrderError
	if !errors.As(err, &oo) || oo.Pending.Version != 2 || oo.Applied.Version != 3 {
		t.Fatalf("err = %v, want 002 out of order after 003", err)
	}
}

func TestFailedMigrationLeavesNoTrace(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	_, pool := storetest.NewEmptyDB(t)
	bad := fstest.MapFS{
		"001_ok.sql":  {Data: []byte("CREATE TABLE ok (id int);")},
		"002_bad.sql": {Data: []byte("CREATE TABLE half (id int);\nSELECT 1/0;")},
	}
	res, err := store.UpgradeFS(ctx, pool, nil, bad)
	if err == nil || !strings.Contains(err.Error(), "002_bad") {
		t.Fatalf("err = %v, want a failure naming 002_bad", err)
	}
	if len(res.Ours) != 1 || res.Ours[0].Version != 1 {
		t.Errorf("result %+v, want 001 applied", res.Ours)
	}
	if n := count(t, pool, `SELECT count(*) FROM schema_migrations`); n != 1 {
		t.Errorf("schema_migrations has %d rows, want 1", n)
	}
	if n := count(t, pool, `SELECT count(*) FROM pg_tables WHERE tablename = 'half'`); n != 0 {
		t.Error("the failed migration's first statement was kept: no transaction per file")
	}
	fixed := fstest.MapFS{
		"001_ok.sql":  bad["001_ok.sql"],
		"002_bad.sql": {Data: []byte("CREATE TABLE half (id int);")},
	}
	res, err = store.UpgradeFS(ctx, pool, nil, fixed)
	if err != nil || len(res.Ours) != 1 || res.Ours[0].Version != 2 {
		t.Fatalf("after the fix: %+v, %v; want 002 applied", res.Ours, err)
	}
}

func TestUpgradeHoldsTheSchemaLock(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	_, pool := storetest.NewEmptyDB(t)

	// Another session holds the lock: the upgrade waits, here until its
	// deadline, and changes nothing.
	holder, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_lock($1)`, store.SchemaLockKey); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err = store.Upgrade(short, pool, nil)
	if err == nil || !strings.Contains(err.Error(), "schema lock") {
		t.Fatalf("err = %v, want a wait for the schema lock that times out", err)
	}
	if n := count(t, pool, `SELECT count(*) FROM pg_tables WHERE tablename IN ('river_migration', 'schema_migrations')`); n != 0 {
		t.Errorf("upgrade changed the schema without the lock (%d tables)", n)
	}
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_unlock($1)`, store.SchemaLockKey); err != nil {
		t.Fatal(err)
	}
	holder.Release()

	if _, err := store.Upgrade(ctx, pool, nil); err != nil {
		t.Fatal(err)
	}
	// The lock is released afterwards: another session can take it at once.
	var got bool
	if err := pool.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, store.SchemaLockKey).Scan(&got); err != nil || !got {
		t.Fatalf("lock still held after the upgrade: %v, %v", got, err)
	}
}

func TestUpgradeNeedsTwoConnections(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	dsn, _ := storetest.NewEmptyDB(t)
	pool, err := store.Open(ctx, dsn, store.WithMaxConns(1))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := store.Upgrade(ctx, pool, nil); err == nil || !strings.Contains(err.Error(), "at least 2 connections") {
		t.Fatalf("err = %v, want a clear pool-size error", err)
	}
}

func TestSchemaFileNames(t *testing.T) {
	t.Parallel()
	sql := &fstest.MapFile{Data: []byte("SELECT 1;")}
	for _, tc := range []struct {
		name  string
		files fstest.MapFS
		want  string // substring of the error; "" means valid
	}{
		{"valid", fstest.MapFS{"002_b.sql": sql, "001_a.sql": sql, "010_ten_x.sql": sql}, ""},
		{"two digits", fstest.MapFS{"01_a.sql": sql}, "NNN_name.sql"},
		{"dash", fstest.MapFS{"001-a.sql": sql}, "NNN_name.sql"},
		{"upper case", fstest.MapFS{"001_A.sql": sql}, "NNN_name.sql"},
		{"not sql", fstest.MapFS{"001_a.txt": sql}, "NNN_name.sql"},
		{"zero", fstest.MapFS{"000_a.sql": sql}, "positive"},
		{"duplicate", fstest.MapFS{"001_a.sql": sql, "0001_b.sql": sql}, "share version 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files, err := store.SchemaFilesFS(tc.files)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if got := versions(schemaVersions(files)); len(got) != 3 || got[0] != 1 || got[1] != 2 || got[2] != 10 {
					t.Errorf("order %v", got)
				}
				if files[0].Name != "a" || len(files[0].Checksum) != 64 {
					t.Errorf("file %+v", files[0])
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func schemaVersions(fs []store.SchemaFile) []store.SchemaVersion {
	out := make([]store.SchemaVersion, len(fs))
	for i, f := range fs {
		out[i] = f.SchemaVersion
	}
	return out
}

// The embedded files are valid, and the template storetest clones is
// current with them.
func TestEmbeddedSchemaIsCurrentInNewDB(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	_, pool := storetest.NewDB(t)
	rep, err := store.Status(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Current() || len(rep.Ours.Applied) != len(mustFiles(t)) {
		t.Fatalf("NewDB is not migrated: %+v", rep)
	}
}

// A database upgraded by a newer binary is reported as such, and is current
// for this one (forward-only migrations are additive).
func TestStatusOfNewerSchema(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	_, pool := storetest.NewEmptyDB(t)
	newer := fstest.MapFS{
		"001_a.sql": {Data: []byte("SELECT 1;")},
		"002_b.sql": {Data: []byte("SELECT 2;")},
	}
	if _, err := store.UpgradeFS(ctx, pool, nil, newer); err != nil {
		t.Fatal(err)
	}
	older := fstest.MapFS{"001_a.sql": newer["001_a.sql"]}
	rep, err := store.StatusFS(ctx, pool, older)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Ours.Applied) != 2 || rep.Ours.Applied[0].Unknown || !rep.Ours.Applied[1].Unknown || !rep.Current() {
		t.Fatalf("status %+v, want 002 unknown and the schema current", rep.Ours)
	}
	if res, err := store.UpgradeFS(ctx, pool, nil, older); err != nil || !res.NoOp() {
		t.Fatalf("older binary's upgrade: %+v, %v; want a no-op", res, err)
	}
}
