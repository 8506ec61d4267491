package pgcluster

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// clusterDir is a directory the server's OS user can reach even when the
// test runs as root (t.TempDir's parent is private to root).
func clusterDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgcluster-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "cluster")
}

func query(t *testing.T, dsn, sql string, args ...any) (n int, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	err = conn.QueryRow(ctx, sql, args...).Scan(&n)
	return n, err
}

func TestStartRestartKeepsData(t *testing.T) {
	c, err := Start(clusterDir(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	dsn := c.DSN("postgres")
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS kept2 (n int); INSERT INTO kept2 VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	port := c.Port()
	if err := c.Restart(); err != nil {
		t.Fatal(err)
	}
	if c.Port() != port || c.DSN("postgres") != dsn {
		t.Fatalf("restart moved the server: port %d -> %d", port, c.Port())
	}
	if n, err := query(t, dsn, "SELECT n FROM kept2"); err != nil || n != 42 {
		t.Fatalf("after restart: n=%d err=%v", n, err)
	}

	// A crash (immediate shutdown) and a new start recover the data too.
	if err := c.Kill(); err != nil {
		t.Fatal(err)
	}
	if c.Running() {
		t.Fatal("Running after Kill")
	}
	if _, err := query(t, dsn, "SELECT 1"); err == nil {
		t.Fatal("query succeeded while the server was down")
	}
	if err := c.StartAgain(); err != nil {
		t.Fatal(err)
	}
	if n, err := query(t, dsn, "SELECT n FROM kept2"); err != nil || n != 42 {
		t.Fatalf("after crash recovery: n=%d err=%v", n, err)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}

	// A new Cluster over the same directory reuses the data.
	c2, err := StartConfig(Config{Dir: c.Dir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c2.Stop() })
	if n, err := query(t, c2.DSN("postgres"), "SELECT n FROM kept2"); err != nil || n != 42 {
		t.Fatalf("reused directory: n=%d err=%v", n, err)
	}
}

func TestTwoClustersSideBySide(t *testing.T) {
	a, err := Start(clusterDir(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Stop() })
	b, err := StartConfig(Config{Dir: clusterDir(t), Settings: []string{"statement_timeout=4242"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Stop() })
	if n, err := query(t, b.DSN("postgres"), "SELECT setting::int FROM pg_settings WHERE name = 'statement_timeout'"); err != nil || n != 4242 {
		t.Fatalf("a setting of Config.Settings: statement_timeout %d, err %v", n, err)
	}
	if a.Port() == b.Port() {
		t.Fatalf("both clusters on port %d", a.Port())
	}
	for _, c := range []*Cluster{a, b} {
		if n, err := query(t, c.DSN("postgres"), "SELECT 7"); err != nil || n != 7 {
			t.Fatalf("cluster on %d: n=%d err=%v", c.Port(), n, err)
		}
	}
}

func TestUnreachableDirIsClear(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root hands the cluster to another OS user")
	}
	private := t.TempDir() // 0700, owned by root
	_, err := Start(filepath.Join(private, "cluster"))
	if err == nil || !strings.Contains(err.Error(), "cannot reach") {
		t.Fatalf("err = %v, want a clear 'cannot reach' error", err)
	}
}

func TestFindBinariesMissing(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := findBinaries(filepath.Join(t.TempDir(), "*", "bin"))
	if !errors.Is(err, ErrNoServerBinaries) {
		t.Fatalf("err = %v, want ErrNoServerBinaries", err)
	}
	const want = "PostgreSQL server binaries (initdb, postgres) not found on PATH or in /usr/lib/postgresql/*/bin; install the Debian package postgresql"
	if err.Error() != want {
		t.Fatalf("message %q", err)
	}
}

func TestFindBinariesFallbackGlob(t *testing.T) {
	root := t.TempDir()
	for _, v := range []string{"13", "16", "9.6"} {
		bin := filepath.Join(root, v, "bin")
		if err := os.MkdirAll(bin, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"initdb", "postgres"} {
			if err := os.WriteFile(filepath.Join(bin, f), []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Setenv("PATH", t.TempDir())
	got, err := findBinaries(filepath.Join(root, "*", "bin"))
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(root, "16", "bin"); got != want {
		t.Fatalf("got %s, want the newest %s", got, want)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{{}, {Dir: "x", Port: -1}, {Dir: "x", Port: 70000}, {Dir: "x", StartTimeout: -1}, {Dir: "x", Settings: []string{"fsync"}}} {
		if err := c.validate(); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
	if err := (Config{Dir: "x"}).validate(); err != nil {
		t.Error(err)
	}
}
