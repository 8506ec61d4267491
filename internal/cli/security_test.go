package cli

// Security checks of a running migrator: no secret in logs or in the
// database after a full run with failures, a read-only HTTP surface, and an
// event log the application's role cannot rewrite. (That every SQL statement
// is parameterized is checked over the source in store/sqlrule_test.go.)

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hermes-cloud/migrator/internal/drainsecret"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/internal/testkit/logbuf"
	"github.com/hermes-cloud/migrator/store"
	"github.com/hermes-cloud/migrator/store/storetest"
)

// secrets are the values that must never be written anywhere: the Fly token,
// the drain key and every agent's derived drain secret, each also as a JSON
// string body would spell it (a JSON log escapes <, >, & and others).
func (w *simWorld) secrets() map[string]string {
	out := map[string]string{}
	add := func(name, v string) {
		out[v] = name
		q, _ := json.Marshal(v)
		out[string(q[1:len(q)-1])] = name
	}
	add("FLY_API_TOKEN", w.sim.FlyToken())
	add("MIGRATOR_DRAIN_KEY", string(w.sim.DrainKey()))
	add("MIGRATOR_SEAL_KEY", w.sim.SealKey())
	for _, app := range w.sim.Apps() {
		add("drain secret of "+app, drainsecret.Derive(w.sim.DrainKey(), app))
	}
	return out
}

// findSecrets reports every secret found in text, naming where.
func findSecrets(t *testing.T, where, text string, secrets map[string]string) {
	t.Helper()
	for v, name := range secrets {
		if i := strings.Index(text, v); i >= 0 {
			t.Errorf("%s holds the %s at byte %d", where, name, i)
		}
	}
}

// startServeInProcess runs `migrator serve` in this process on the world's
// environment, logging at debug level to the returned buffer; stop ends it.
func (w *simWorld) startServeInProcess() (log *logbuf.Buffer, stop func()) {
	w.t.Helper()
	vars := map[string]string{}
	for _, kv := range w.env {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v // later entries win, as in exec.Cmd
	}
	log = &logbuf.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	go func() {
		done <- run(ctx, &env{getenv: func(k string) string { return vars[k] }, stdout: log, stderr: log}, []string{"serve"})
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if code := <-done; code != exitOK {
				w.t.Errorf("in-process serve exited %d", code)
			}
		})
	}
	w.t.Cleanup(stop)
	return log, stop
}

// dumpDatabase returns every row of every table of the database's public
// schema — migrator's tables and River's (river_job's args, errors and
// metadata included) — as PostgreSQL's text form of the row, one per line.
func dumpDatabase(t *testing.T, pool *pgxpool.Pool) (string, []string) {
	t.Helper()
	ctx := context.Background()
	rows, err := pool.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename`)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, name := range tables {
		rows, err := pool.Query(ctx, `SELECT t::text FROM `+pgx.Identifier{"public", name}.Sanitize()+` t`)
		if err != nil {
			t.Fatal(err)
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range lines {
			fmt.Fprintf(&b, "%s: %s\n", name, l)
		}
	}
	return b.String(), tables
}

// A full run — drains, recreates, a Fly API that fails now and then, an
// agent holding another secret (401s), an unreachable dashboard — worked by
// a `serve` child process and an in-process serve, both logging at debug
// level, leaves no Fly token, drain key or derived drain secret in either's
// log, nor anywhere in the database: every column of every row of every
// table, River's job arguments and errors included.
func TestSecurityFullRunLeaksNoSecret(t *testing.T) {
	t.Parallel()
	const machines = 8
	w := newSimWorld(t, fleetsim.Config{Apps: machines, Seed: 77,
		Workload: fleetsim.Workload{BusyFraction: 0.3, TurnMedian: 10 * time.Second}}, 50,
		"MIGRATOR_FLEET_CAP=4", "MIGRATOR_POLL_INTERVAL=1s", "MIGRATOR_LOG_LEVEL=debug", noQuietPolicy(t))
	apps := w.sim.Apps()
	w.sim.SetWrongSecret(apps[2], true)
	w.sim.SetDashboardDown(apps[5], w.sim.MachineIDs(apps[5])[0], true)
	w.sim.SetFaults(fleetsim.Faults{Routes: map[string]fleetsim.RouteFaults{
		fleetsim.RouteGet:    {P5xx: 0.2, Status5xx: 502},
		fleetsim.RouteUpdate: {P429: 0.2},
		fleetsim.RouteLease:  {P5xx: 0.1},
	}})
	child := w.startServe("child")
	inproc, stop := w.startServeInProcess()

	run := w.faultRun("4", 2*time.Minute, machines)
	r := w.waitRun(run.ID, 90*time.Second)
	stop()
	counts := w.checkEnd(run.ID, store.OutcomeMigrated, store.OutcomeFailed)
	t.Logf("run %s: %s; outcomes %v", r.State, r.StateReason, counts)

	secrets := w.secrets()
	childLog, err := os.ReadFile(child.log)
	if err != nil {
		t.Fatal(err)
	}
	inprocLog := inproc.String()
	dump, tables := dumpDatabase(t, w.st.Pool())
	findSecrets(t, "serve's stderr (child process)", string(childLog), secrets)
	findSecrets(t, "serve's log (in process)", inprocLog, secrets)
	findSecrets(t, "the database", dump, secrets)

	// The haystacks are the real thing: both replicas logged machines'
	// transitions at debug level, the 401 and the unreachable dashboard are
	// in the logs and the database, and River's jobs were dumped.
	logs := string(childLog) + inprocLog
	for _, want := range []string{`"level":"DEBUG"`, `"msg":"machine migrated"`, "HTTP 401", "gateway unreachable", apps[2], apps[5]} {
		if !strings.Contains(logs, want) {
			t.Errorf("the captured logs have no %q: the check above proves little", want)
		}
	}
	for _, l := range []string{string(childLog), inprocLog} {
		if !strings.Contains(l, `"msg":"machine `) {
			t.Errorf("a replica logged no machine transition (%d bytes)", len(l))
		}
	}
	for _, want := range []string{"river_job: ", "machine_migration", "events: ", "gateway.begin", "HTTP 401", "drains: "} {
		if !strings.Contains(dump, want) {
			t.Errorf("the database dump has no %q (tables %v)", want, tables)
		}
	}
}

// serveAddr waits for a serve child to log the address it listens on.
func serveAddr(t *testing.T, p *serveProc) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		f, err := os.Open(p.log)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			var line struct {
				Msg  string `json:"msg"`
				Addr string `json:"http_addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "serving" && line.Addr != "" {
				f.Close()
				return line.Addr
			}
		}
		f.Close()
		select {
		case <-p.done:
			t.Fatalf("serve exited before serving")
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatal("serve did not log its HTTP address within 30s")
	return ""
}

// serve's HTTP has no write operation: every other method on every route
// (and on the root) is 404 or 405, and nothing else (pprof, expvar) is
// exposed. What GET returns holds no secret.
func TestSecurityServeHTTPIsReadOnly(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t, fleetsim.Config{Apps: 2, Seed: 3}, 50)
	addr := serveAddr(t, w.startServe("http"))
	base := "http://" + addr
	client := &http.Client{Timeout: 10 * time.Second}
	secrets := w.secrets()
	do := func(method, path string) (int, string) {
		req, err := http.NewRequest(method, base+path, strings.NewReader(`{"action":"drain"}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var h strings.Builder
		_ = resp.Header.Write(&h)
		return resp.StatusCode, h.String() + "\n" + string(body)
	}
	paths := []string{"/", "/healthz", "/readyz", "/metrics", "/api/gateway/drain", "/runs", "/debug/pprof/", "/debug/vars"}
	for _, path := range paths {
		for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
			if code, _ := do(method, path); code != http.StatusNotFound && code != http.StatusMethodNotAllowed {
				t.Errorf("%s %s = %d, want 404 or 405: serve must expose no write operation", method, path, code)
			}
		}
		code, resp := do(http.MethodGet, path)
		findSecrets(t, "GET "+path, resp, secrets)
		switch path {
		case "/healthz", "/readyz":
			if code != http.StatusOK {
				t.Errorf("GET %s = %d, want 200", path, code)
			}
		case "/metrics": // optional
		case "/", "/runs": // the read-only web view (/ redirects to /runs)
			if code != http.StatusOK {
				t.Errorf("GET %s = %d, want 200 (the web view)", path, code)
			}
		default:
			if code != http.StatusNotFound {
				t.Errorf("GET %s = %d, want 404", path, code)
			}
		}
	}
}

// The event log cannot be rewritten by the role migrator runs as, even with
// every table privilege granted on events: the append-only triggers refuse
// UPDATE, DELETE and TRUNCATE (store/data_test.go's TestEventsAppendOnly
// shows that as the superuser), and a role that does not own the table
// cannot switch them off — not with ALTER TABLE … DISABLE TRIGGER, DROP
// TRIGGER, nor session_replication_role = replica (which silences triggers).
// The owner of the schema (who runs `migrator db upgrade`) still can: serve
// should run as a role that does not own it.
func TestSecurityEventLogAppendOnlyForAppRole(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn, admin := storetest.NewDB(t)
	role := fmt.Sprintf("migrator_app_%d", time.Now().UnixNano())
	ident := pgx.Identifier{role}.Sanitize()
	for _, sql := range []string{
		`CREATE ROLE ` + ident + ` LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS`,
		`GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON events TO ` + ident,
		`GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO ` + ident,
	} {
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	t.Cleanup(func() {
		// Roles are cluster-wide: drop it (after the database goes with its grants).
		_, _ = admin.Exec(context.Background(), `REVOKE ALL ON events FROM `+ident)
		_, _ = admin.Exec(context.Background(), `REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM `+ident)
		_, _ = admin.Exec(context.Background(), `DROP ROLE IF EXISTS `+ident)
	})
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.User, cfg.ConnConfig.Password = role, ""
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	app := store.New(pool)
	if err := app.Q().AppendEvents(ctx, store.Scope{RunID: 1}, store.Event{Kind: "run.created", Target: "1"}); err != nil {
		t.Fatalf("the app role cannot append: %v", err)
	}
	var superuser bool
	if err := pool.QueryRow(ctx, `SELECT rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&superuser); err != nil || superuser {
		t.Fatalf("connected as a superuser (%v): the test proves nothing", err)
	}
	for _, c := range []struct{ sql, why string }{
		{`UPDATE events SET error = 'rewritten'`, "append-only"},
		{`DELETE FROM events`, "append-only"},
		{`TRUNCATE events`, "append-only"},
		{`ALTER TABLE events DISABLE TRIGGER events_append_only`, "must be owner"},
		{`ALTER TABLE events DISABLE TRIGGER ALL`, "must be owner"},
		{`DROP TRIGGER events_append_only ON events`, "must be owner"},
		{`SET session_replication_role = replica`, "permission denied"},
	} {
		_, err := pool.Exec(ctx, c.sql)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" || !strings.Contains(pgErr.Message, c.why) {
			t.Errorf("%s as the app role: err = %v, want SQLSTATE 42501 (%s)", c.sql, err, c.why)
		}
	}
	evs, err := app.Q().ListEvents(ctx, store.Scope{RunID: 1}, 0)
	if err != nil || len(evs) != 1 || evs[0].Error != "" {
		t.Fatalf("events after the attempts: %+v, %v", evs, err)
	}
}
