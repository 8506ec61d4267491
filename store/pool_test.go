package store_test

import (
	"context"
	"errors"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hermes-cloud/migrator/store"
	"github.com/hermes-cloud/migrator/store/storetest"
)

const secret = "s3cr3t-pw"

// closedPort is a loopback port nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func checkMessage(t *testing.T, err error) {
	t.Helper()
	msg := err.Error()
	if strings.Contains(msg, secret) || strings.Contains(msg, "s3cr3t") {
		t.Errorf("message leaks the password: %q", msg)
	}
	if strings.ContainsAny(msg, "\n\r") {
		t.Errorf("message is not one line: %q", msg)
	}
}

func TestOpenConfigErrors(t *testing.T) {
	t.Parallel()
	for _, dsn := range []string{
		"",
		"   ",
		"postgres://app:" + secret + "@localhost:notaport/db",
		"postgres://app:" + secret + "@db.example:5432/db?connect_timeout=soon",
		"postgres://app:" + secret + "@db.example:5432/db?sslmode=sometimes",
		"postgres://app:pa%zz" + secret + "@db.example/db",
		"postgresql://app:" + secret + "@[::1/db",
		"host=localhost password=" + secret + " port=notaport",
		"host=localhost password='" + secret + "' sslmode=sometimes",
		"just some words " + secret,
		"postgres://app@db.example/db?password=" + secret + "&sslmode=sometimes",
		"postgres://app:" + secret + "@db.example/db?password=" + secret + "&stray",
		"host=db.example password=" + secret + " 'unterminated",
	} {
		_, err := store.Open(context.Background(), dsn)
		var ce *store.ConfigError
		if !errors.As(err, &ce) {
			t.Errorf("Open(%q) = %v, want a ConfigError", dsn, err)
			continue
		}
		checkMessage(t, err)
		if !strings.HasPrefix(err.Error(), "invalid connection string: ") || len(ce.Reason) < 5 {
			t.Errorf("Open(%q): unclear message %q", dsn, err)
		}
	}
}

func TestOpenUnreachable(t *testing.T) {
	t.Parallel()
	addr := closedPort(t)
	_, err := store.Open(context.Background(), "postgres://app:"+secret+"@"+addr+"/db?sslmode=disable")
	var ce *store.ConnectError
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v, want a ConnectError", err)
	}
	checkMessage(t, err)
	if !strings.Contains(err.Error(), "app@"+addr+"/db") || !strings.Contains(err.Error(), "refused") {
		t.Errorf("message %q should name the target and the cause", err)
	}
	var netErr net.Error
	if !errors.As(err, &netErr) {
		t.Errorf("the network error is not reachable with errors.As: %v", err)
	}
}

func TestOpenTimesOut(t *testing.T) {
	t.Parallel()
	// A server that accepts connections and never answers.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	begin := time.Now()
	_, err = store.Open(context.Background(), "postgres://app:"+secret+"@"+l.Addr().String()+"/db?sslmode=disable",
		store.WithConnectTimeout(300*time.Millisecond))
	var ce *store.ConnectError
	if !errors.As(err, &ce) || !strings.Contains(ce.Reason, "no answer within 300ms") {
		t.Fatalf("err = %v, want a ConnectError saying no answer within 300ms", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("errors.Is(err, DeadlineExceeded) is false: %v", err)
	}
	if d := time.Since(begin); d > 10*time.Second {
		t.Errorf("took %v: the connect timeout was not applied", d)
	}
	checkMessage(t, err)
}

func TestOpenServerRefusal(t *testing.T) {
	t.Parallel()
	u, err := url.Parse(storetest.AdminDSN(t))
	if err != nil || u.Scheme == "" {
		t.Skip("admin DSN is not a URL")
	}
	// The test cluster trusts everyone, so the password is ignored and the
	// server's refusal is the missing database.
	u.User = url.UserPassword(u.User.Username(), secret)
	u.Path = "/no_such_database_here"
	_, err = store.Open(context.Background(), u.String())
	var ce *store.ConnectError
	if !errors.As(err, &ce) || !strings.Contains(ce.Reason, "3D000") || !strings.Contains(err.Error(), "no_such_database_here") {
		t.Fatalf("err = %v, want the server's 'database does not exist' (3D000)", err)
	}
	checkMessage(t, err)
}

type countingTracer struct{ n atomic.Int64 }

func (c *countingTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}
func (c *countingTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func TestOpenWithTracerAndMaxConns(t *testing.T) {
	t.Parallel()
	dsn, _ := storetest.NewEmptyDB(t)
	tr := &countingTracer{}
	pool, err := store.Open(context.Background(), dsn, store.WithQueryTracer(tr), store.WithMaxConns(3))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if got := pool.Config().MaxConns; got != 3 {
		t.Errorf("MaxConns = %d, want 3", got)
	}
	before := tr.n.Load()
	for range 3 {
		if _, err := pool.Exec(context.Background(), "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	if got := tr.n.Load() - before; got != 3 {
		t.Errorf("tracer saw %d queries, want 3", got)
	}
}
