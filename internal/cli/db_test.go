package cli

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/store"
	"github.com/hermes-cloud/migrator/store/storetest"
)

// TestMain is this package's only one: any test here may use storetest.
func TestMain(m *testing.M) { storetest.Main(m) }

// runCLI runs the CLI in-process with only DATABASE_URL set (when non-empty).
func runCLI(t *testing.T, databaseURL string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	e := &env{
		getenv: func(k string) string {
			if k == databaseURLEnv {
				return databaseURL
			}
			return ""
		},
		stdout: &out,
		stderr: &errb,
	}
	code = run(ctx, e, args)
	return code, out.String(), errb.String()
}

func TestDBUpgradeAndStatus(t *testing.T) {
	t.Parallel()
	dsn, _ := storetest.NewEmptyDB(t)
	files, err := store.SchemaFiles()
	if err != nil {
		t.Fatal(err)
	}

	code, out, errOut := runCLI(t, dsn, "db", "status")
	if code != 0 || errOut != "" {
		t.Fatalf("status on a fresh database: exit %d, stderr %q", code, errOut)
	}
	if !strings.HasPrefix(out, "SCHEMA") || !strings.Contains(row(out, "river", 1), "pending  -") {
		t.Errorf("status table unclear:\n%s", out)
	}
	if last := lastLine(out); !strings.HasSuffix(last, "migrations pending: run `migrator db upgrade`") {
		t.Errorf("last line %q, want the pending count and what to run", last)
	}
	if r := row(out, "migrator", files[0].Version); !strings.Contains(r, files[0].Name) || !strings.Contains(r, "pending  -") {
		t.Errorf("our first migration %s is not listed pending:\n%s", files[0].SchemaVersion, out)
	}

	code, out, errOut = runCLI(t, dsn, "db", "upgrade")
	if code != 0 || errOut != "" {
		t.Fatalf("upgrade: exit %d, stderr %q", code, errOut)
	}
	if !strings.Contains(out, fmt.Sprintf("applied  migrator  %03d  %s\n", files[0].Version, files[0].Name)) || !strings.Contains(out, "applied  river ") {
		t.Errorf("upgrade did not say what it applied:\n%s", out)
	}

	code, out, _ = runCLI(t, dsn, "db", "upgrade")
	if code != 0 || strings.TrimSpace(out) != "already current: nothing to apply" {
		t.Errorf("second upgrade: exit %d, output %q", code, out)
	}

	code, out, _ = runCLI(t, dsn, "db", "status")
	if code != 0 || lastLine(out) != "schema is current" || strings.Contains(out, "pending  -") {
		t.Errorf("status after upgrade: exit %d\n%s", code, out)
	}
	for _, f := range files {
		if r := row(out, "migrator", f.Version); !strings.Contains(r, f.Name) || !strings.Contains(r, "applied  20") {
			t.Errorf("status does not list %s as applied with its time:\n%s", f.SchemaVersion, out)
		}
	}
}

func TestDBStatusReportsEditedMigration(t *testing.T) {
	t.Parallel()
	dsn, pool := storetest.NewDB(t)
	if _, err := pool.Exec(context.Background(), `UPDATE schema_migrations SET checksum = 'edited' WHERE version = (SELECT min(version) FROM schema_migrations)`); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCLI(t, dsn, "db", "status")
	if code != exitFailed || !strings.Contains(out, "FILE EDITED SINCE") || !strings.Contains(errOut, "edited") {
		t.Errorf("exit %d\nstdout:\n%s\nstderr: %s", code, out, errOut)
	}
	code, _, errOut = runCLI(t, dsn, "db", "upgrade")
	if code != exitFailed || !strings.Contains(errOut, "was edited after it was applied") {
		t.Errorf("upgrade over an edited migration: exit %d, stderr %q", code, errOut)
	}
}

func TestDBBadDatabaseURL(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t-pw"
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()

	for _, tc := range []struct {
		name, url, want string
	}{
		{"missing", "", "DATABASE_URL is not set"},
		{"blank", "  ", "DATABASE_URL is not set"},
		{"unparseable URL", "postgres://app:" + secret + "@localhost:notaport/migrator", "DATABASE_URL: invalid connection string"},
		{"unparseable keyword/value", "host=db password=" + secret + " nonsense", "DATABASE_URL: invalid connection string"},
		{"unreachable", "postgres://app:" + secret + "@" + closed + "/migrator?sslmode=disable", "DATABASE_URL: cannot connect to app@" + closed + "/migrator"},
	} {
		for _, sub := range []string{"upgrade", "status"} {
			t.Run(tc.name+"/"+sub, func(t *testing.T) {
				code, out, errOut := runCLI(t, tc.url, "db", sub)
				if code != exitUsage {
					t.Errorf("exit %d, want %d", code, exitUsage)
				}
				if out != "" {
					t.Errorf("stdout not empty: %q", out)
				}
				if strings.Count(errOut, "\n") != 1 || !strings.HasSuffix(errOut, "\n") {
					t.Errorf("stderr is not one line: %q", errOut)
				}
				if !strings.Contains(errOut, tc.want) {
					t.Errorf("stderr %q, want it to contain %q", errOut, tc.want)
				}
				if strings.Contains(errOut, secret) || strings.Contains(errOut, "goroutine") {
					t.Errorf("stderr leaks the password or a stack: %q", errOut)
				}
			})
		}
	}
}

func TestDBCommandsHaveExamples(t *testing.T) {
	cmd := newDBCmd(&env{getenv: func(string) string { return "" }})
	for _, c := range append(cmd.Commands(), cmd) {
		if c.Example == "" {
			t.Errorf("%s has no Example", c.CommandPath())
		}
	}
}

// row is the status table's line for one migration.
func row(out, schema string, version int) string {
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) > 2 && f[0] == schema && f[1] == fmt.Sprintf("%03d", version) {
			return l
		}
	}
	return ""
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}
