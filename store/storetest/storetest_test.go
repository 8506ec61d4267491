package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { Main(m) }

func scalar[T any](t *testing.T, db interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, sql string, args ...any) T {
	t.Helper()
	var v T
	if err := db.QueryRow(context.Background(), sql, args...).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

func TestNewDBIsMigratedAndIsolated(t *testing.T) {
	t.Parallel()
	_, a := NewDB(t)
	_, b := NewDB(t)
	if n := scalar[int](t, a, `SELECT count(*) FROM schema_migrations`); n == 0 {
		t.Fatal("NewDB is not migrated")
	}
	if n := scalar[int](t, a, `SELECT count(*) FROM river_migration`); n == 0 {
		t.Fatal("NewDB lacks River's schema")
	}
	if _, err := a.Exec(context.Background(), `CREATE TABLE only_in_a (id int)`); err != nil {
		t.Fatal(err)
	}
	if scalar[bool](t, b, `SELECT to_regclass('only_in_a') IS NOT NULL`) {
		t.Fatal("a table made in one test database shows in another")
	}
	if scalar[string](t, a, `SELECT current_database()`) == scalar[string](t, b, `SELECT current_database()`) {
		t.Fatal("two NewDB calls share a database")
	}
}

func TestNewEmptyDBIsEmpty(t *testing.T) {
	t.Parallel()
	dsn, pool := NewEmptyDB(t)
	if n := scalar[int](t, pool, `SELECT count(*) FROM pg_tables WHERE schemaname = 'public'`); n != 0 {
		t.Fatalf("empty database has %d tables", n)
	}
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatalf("dsn does not connect: %v", err)
	}
	conn.Close(context.Background())
}

func TestDatabasesAreDroppedAfterTheTest(t *testing.T) {
	t.Parallel()
	var name string
	t.Run("user", func(t *testing.T) {
		_, pool := NewDB(t)
		name = scalar[string](t, pool, `SELECT current_database()`)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, AdminDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if n := scalar[int](t, admin, `SELECT count(*) FROM pg_database WHERE datname = $1`, name); n != 0 {
		t.Fatalf("database %s still exists after its test", name)
	}
}

func TestWithDatabase(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"postgres://u:p@h:5432/postgres?sslmode=disable", "postgres://u:p@h:5432/x?sslmode=disable"},
		{"postgresql://u@h/", "postgresql://u@h/x"},
		{"host=h user=u dbname=postgres", "host=h user=u dbname=postgres dbname=x"},
	} {
		if got := withDatabase(tc.in, "x"); got != tc.want {
			t.Errorf("withDatabase(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
