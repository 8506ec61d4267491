package cli

// The web view is closed by default on any address beyond loopback: the
// decision (pure), the settings, and serve as a tenant on the private
// network would meet it.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/callrec"
	"github.com/hermes-cloud/migrator/internal/metrics"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

const (
	testWebToken    = "web-token-Zq8ncTq2uRk4LwPe"
	testWebPassword = "web-pass-Hn5vYc3Lrx7Ma2Qs"
)

// nonLoopbackIP is an address of this host beyond loopback ("" when it has
// none): serve bound to it is reachable from other hosts.
func nonLoopbackIP(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var v6 string
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok || n.IP.IsLoopback() || n.IP.IsLinkLocalUnicast() || !n.IP.IsGlobalUnicast() && !n.IP.IsPrivate() {
			continue
		}
		if n.IP.To4() != nil {
			return n.IP.String()
		}
		if v6 == "" {
			v6 = n.IP.String()
		}
	}
	return v6
}

// beyondLoopback is a MIGRATOR_HTTP_ADDR that is not loopback: an address
// of this host's network if it has one, else every interface.
func beyondLoopback(t *testing.T) string {
	if ip := nonLoopbackIP(t); ip != "" {
		return net.JoinHostPort(ip, "0")
	}
	return ":0"
}

// dialable turns a listen address into one a client can reach.
func dialable(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return addr
}

// Where serve listens decides, with the settings, whether the view is
// served: loopback is decided from the listener's real address (":0",
// "0.0.0.0" and "[::]" are every interface), credentials always win, and
// beyond loopback only an explicit MIGRATOR_WEB_OPEN=true opens it.
func TestWebAccessMode(t *testing.T) {
	listens := map[string]bool{ // address → loopback
		"127.0.0.1:0": true, "[::1]:0": true, "localhost:0": true,
		":0": false, "0.0.0.0:0": false, "[::]:0": false,
	}
	if ip := nonLoopbackIP(t); ip != "" {
		listens[net.JoinHostPort(ip, "0")] = false
	}
	none, token, basic, open := webAccess{}, webAccess{token: testWebToken}, webAccess{user: "u", password: testWebPassword}, webAccess{open: true}
	for addr, loopback := range listens {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			if strings.Contains(addr, "::") {
				continue // no IPv6 on this host
			}
			t.Fatal(err)
		}
		la := ln.Addr()
		ln.Close()
		if got := isLoopback(la); got != loopback {
			t.Errorf("%s (listening on %s): loopback %v, want %v", addr, la, got, loopback)
		}
		want := map[webAccess]webMode{none: webOff, token: webCredentials, basic: webCredentials, open: webOpenExplicit}
		if loopback {
			want[none], want[open] = webOpenLoopback, webOpenLoopback
		}
		for a, m := range want {
			if got := a.mode(la); got != m {
				t.Errorf("%s, credentials %v, open %v: %s, want %s", la, a.hasCredentials(), a.open, got, m)
			}
		}
	}
}

// The settings: a bad value is one line that never shows the secret.
func TestLoadWebAccess(t *testing.T) {
	cases := []struct {
		name string
		env  map[string]string
		want webAccess
		err  string
	}{
		{"nothing", nil, webAccess{}, ""},
		{"open", map[string]string{webOpenEnv: "true"}, webAccess{open: true}, ""},
		{"open, any case", map[string]string{webOpenEnv: " TRUE "}, webAccess{open: true}, ""},
		{"closed explicitly", map[string]string{webOpenEnv: "false"}, webAccess{}, ""},
		{"token", map[string]string{webTokenEnv: " " + testWebToken + "\n"}, webAccess{token: testWebToken}, ""},
		{"basic", map[string]string{webBasicAuthEnv: "oncall:" + testWebPassword}, webAccess{user: "oncall", password: testWebPassword}, ""},
		{"basic, colon in the password", map[string]string{webBasicAuthEnv: "oncall:a:" + testWebPassword}, webAccess{user: "oncall", password: "a:" + testWebPassword}, ""},
		{"both credentials", map[string]string{webTokenEnv: testWebToken, webBasicAuthEnv: "oncall:" + testWebPassword},
			webAccess{token: testWebToken, user: "oncall", password: testWebPassword}, ""},
		{"open maybe", map[string]string{webOpenEnv: "maybe"}, webAccess{}, `MIGRATOR_WEB_OPEN="maybe": want true or false`},
		{"open 1", map[string]string{webOpenEnv: "1"}, webAccess{}, `MIGRATOR_WEB_OPEN="1": want true or false`},
		{"basic without a colon", map[string]string{webBasicAuthEnv: "oncall" + testWebPassword}, webAccess{}, "MIGRATOR_WEB_BASIC_AUTH: want user:password"},
		{"basic without a user", map[string]string{webBasicAuthEnv: ":" + testWebPassword}, webAccess{}, "MIGRATOR_WEB_BASIC_AUTH: want user:password"},
		{"basic without a password", map[string]string{webBasicAuthEnv: "oncall:"}, webAccess{}, "MIGRATOR_WEB_BASIC_AUTH: want user:password"},
		{"basic, short password", map[string]string{webBasicAuthEnv: "oncall:pw-short-1"}, webAccess{}, "MIGRATOR_WEB_BASIC_AUTH: the password is too short: 10 characters, need at least 16"},
		{"basic, passwordpassword", map[string]string{webBasicAuthEnv: "oncall:passwordpassword"}, webAccess{}, "MIGRATOR_WEB_BASIC_AUTH: the password repeats a pattern of 8 characters"},
		{"basic, one letter", map[string]string{webBasicAuthEnv: "oncall:aaaaaaaaaaaaaaaaaaab"}, webAccess{}, "MIGRATOR_WEB_BASIC_AUTH: the password does not look random"},
		{"weak token", map[string]string{webTokenEnv: "abcdefghijklmnopqrstuvwxyz"}, webAccess{}, "MIGRATOR_WEB_TOKEN: the token does not look random"},
		{"basic, control character", map[string]string{webBasicAuthEnv: "on\x01call:" + testWebPassword}, webAccess{}, "MIGRATOR_WEB_BASIC_AUTH: control characters"},
		{"short token", map[string]string{webTokenEnv: "tok-short-12"}, webAccess{}, "MIGRATOR_WEB_TOKEN: the token is too short: 12 characters, need at least 16"},
		{"token with a space", map[string]string{webTokenEnv: "web token Zq8ncTq2uRk4"}, webAccess{}, "MIGRATOR_WEB_TOKEN: want printable ASCII"},
		{"open and a token", map[string]string{webOpenEnv: "true", webTokenEnv: testWebToken}, webAccess{}, "MIGRATOR_WEB_OPEN=true and MIGRATOR_WEB_TOKEN/MIGRATOR_WEB_BASIC_AUTH are both set"},
	}
	for _, tc := range cases {
		got, err := loadWebAccess(envOf(tc.env))
		if tc.err == "" {
			if err != nil || got != tc.want {
				t.Errorf("%s: %+v, %v; want %+v", tc.name, got, err, tc.want)
			}
			continue
		}
		var ue usageError
		if err == nil || !errors.As(err, &ue) || !strings.HasPrefix(err.Error(), tc.err) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want a usage error starting %q", tc.name, err, tc.err)
			continue
		}
		for k, v := range tc.env {
			if k != webOpenEnv && strings.Contains(err.Error(), strings.TrimSpace(v)) {
				t.Errorf("%s: the error shows %s's value: %v", tc.name, k, err)
			}
		}
	}
}

// serve refuses a bad web view setting before it touches anything: exit 2,
// one line, no secret in it.
func TestServeBadWebSettingExits2(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ env, want string }{
		{webOpenEnv + "=maybe", `migrator: MIGRATOR_WEB_OPEN="maybe": want true or false`},
		{webBasicAuthEnv + "=oncall-" + testWebPassword, "migrator: MIGRATOR_WEB_BASIC_AUTH: want user:password"},
		{webTokenEnv + "=short-token", "migrator: MIGRATOR_WEB_TOKEN: the token is too short: 11 characters, need at least 16"},
		{webBasicAuthEnv + "=oncall:passwordpassword", "migrator: MIGRATOR_WEB_BASIC_AUTH: the password repeats a pattern of 8 characters"},
	} {
		cmd := exec.Command(migratorBinary(t), "serve")
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), tc.env} // nothing else: checked before the database
		cmd.Dir = t.TempDir()
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitUsage {
			t.Errorf("%s: %v, want exit 2", tc.env, err)
		}
		lines := strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n")
		if len(lines) != 1 || !strings.HasPrefix(lines[0], tc.want) || stdout.Len() != 0 {
			t.Errorf("%s: stdout %q, stderr %q; want one line starting %q", tc.env, stdout.String(), stderr.String(), tc.want)
		}
		if _, v, _ := strings.Cut(tc.env, "="); v != "maybe" && strings.Contains(stderr.String(), v) {
			t.Errorf("%s: stderr shows the value", tc.env)
		}
	}
}

// webPaths are every route of the web view, on a run of w (its first
// machine migration, its first agent).
func webPaths(t *testing.T, w *simWorld, runID int64) []string {
	t.Helper()
	var migID int64
	var app, machine string
	if err := w.st.Pool().QueryRow(context.Background(),
		`SELECT id, app, machine_id FROM machine_migrations WHERE run_id = $1 ORDER BY id LIMIT 1`, runID).Scan(&migID, &app, &machine); err != nil {
		t.Fatal(err)
	}
	return []string{"/", "/runs", "/runs?state=succeeded", fmt.Sprintf("/runs/%d", runID), fmt.Sprintf("/runs/%d/timeline.json", runID),
		fmt.Sprintf("/migrations/%d", migID), fmt.Sprintf("/migrations/%d/events.json", migID), "/agents/" + app, "/agents/" + app + "/" + machine,
		"/history", fmt.Sprintf("/history?run=%d", runID), fmt.Sprintf("/history.csv?run=%d", runID), "/static/app.js"}
}

// do sends a GET with the Authorization header auth ("" for none).
func do(t *testing.T, url, auth string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	client := &http.Client{Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return res.StatusCode, res.Header, readAll(t, res)
}

// tenantIdentifiers are what must not reach anyone on the network without
// credentials: every app name, machine id, instance id and private address
// of the fleet, and the run's reason and requester.
func tenantIdentifiers(w *simWorld, run store.Run) map[string]string {
	out := map[string]string{run.Reason: "the run's reason", run.RequestedBy: "the run's requester"}
	for _, m := range w.sim.Machines() {
		out[m.App] = "app name " + m.App
		out[m.ID] = "machine id of " + m.App
		out[m.InstanceID] = "instance id of " + m.App
		out[m.PrivateIP] = "private address of " + m.App
	}
	delete(out, "")
	return out
}

// logLines returns serve's log lines whose msg starts with prefix.
func logLines(t *testing.T, p *serveProc, prefix string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(p.log)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, line := range strings.Split(string(data), "\n") {
		var l map[string]any
		if json.Unmarshal([]byte(line), &l) == nil {
			if msg, _ := l["msg"].(string); strings.HasPrefix(msg, prefix) {
				out = append(out, l)
			}
		}
	}
	return out
}

// serve on an address beyond loopback, as a tenant's agent on the Fly
// private network meets it:
//   - without credentials every web view path is absent (404) while
//     health and metrics answer, and start-up says so once, with how to
//     enable it;
//   - with a token the pages answer only with it, and wrong tokens from
//     one address are slowed (429, Retry-After), logged without the value;
//   - with MIGRATOR_WEB_OPEN=true they answer to anyone, and start-up
//     warns.
//
// Health and metrics carry no app name, machine id, instance id, private
// address, run reason or requester after a real run; no log carries a
// web credential or a presented one.
func TestServeWebViewBeyondLoopback(t *testing.T) {
	t.Parallel()
	listen := beyondLoopback(t)
	w := newSimWorld(t, fleetsim.Config{Apps: 4, Seed: 20}, 50, httpAddrEnv+"="+listen)
	closed := w.startServe("closed")
	base := "http://" + dialable(serveAddr(t, closed))
	run, _, err := w.orch.CreateRun(context.Background(), orchestrator.RunRequest{Cause: policy.Operator, Image: serveTestImage,
		MaxUnavailable: "4", RequestedBy: "oncall-dana@example.com", Reason: "customer acme-robotics asked for v2 (ticket 4411)",
		Selector: store.Selector{Org: w.sim.Org()}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := w.waitRun(run.ID, 2*time.Minute); r.State != store.RunSucceeded {
		t.Fatalf("run %s: %s", r.State, r.StateReason)
	}
	paths := webPaths(t, w, run.ID)
	tenants := tenantIdentifiers(w, run)

	// 1. No credentials: nothing of the view; health and metrics answer,
	// without a tenant's name in them.
	for _, p := range paths {
		code, _, body := do(t, base+p, "")
		if code != http.StatusNotFound {
			t.Errorf("closed: GET %s = %d, want 404", p, code)
		}
		findSecrets(t, "closed: GET "+p, body, tenants)
	}
	for _, p := range healthPaths {
		code, _, body := do(t, base+p, "")
		if code != http.StatusOK {
			t.Errorf("closed: GET %s = %d, want 200", p, code)
		}
		findSecrets(t, "GET "+p, body, tenants)
		findSecrets(t, "GET "+p, body, w.secrets())
		if p == "/metrics" && metricValue(body, `migrator_machine_migrations_total{outcome="migrated"}`) != 4 {
			t.Errorf("/metrics does not show the run's 4 migrations: the walk above proves little")
		}
	}
	if off := logLines(t, closed, "web view off"); len(off) != 1 || !strings.Contains(fmt.Sprint(off[0]["enable"]), webTokenEnv) ||
		!strings.Contains(fmt.Sprint(off[0]["enable"]), webOpenEnv+"=true") {
		t.Errorf("closed: start-up lines about the view: %v, want one saying how to enable it", off)
	}
	if s := logLines(t, closed, "serving"); len(s) != 1 || s[0]["web_view"] != "off" {
		t.Errorf("closed: serving line %v, want web_view off", s)
	}

	// 2. A token: the pages answer with it only.
	tokened := w.startServe("token", webTokenEnv+"="+testWebToken)
	base = "http://" + dialable(serveAddr(t, tokened))
	bearer := "Bearer " + testWebToken
	for _, p := range paths {
		if code, _, body := do(t, base+p, ""); code != http.StatusUnauthorized || strings.Contains(body, w.sim.Apps()[0]) {
			t.Errorf("token: GET %s without it = %d, want 401", p, code)
		}
		code, _, body := do(t, base+p, bearer)
		if want := map[bool]int{true: http.StatusFound, false: http.StatusOK}[p == "/"]; code != want {
			t.Errorf("token: GET %s with it = %d, want %d", p, code, want)
		}
		findSecrets(t, "token: GET "+p, body, w.secrets())
	}
	if _, _, body := do(t, base+fmt.Sprintf("/history.csv?run=%d", run.ID), bearer); !strings.Contains(body, run.Reason) ||
		!strings.Contains(body, w.sim.Apps()[3]) {
		t.Errorf("the history download lacks the run's reason or apps: the identifiers looked for above are not the fleet's")
	}
	for _, p := range healthPaths {
		if code, _, _ := do(t, base+p, ""); code != http.StatusOK {
			t.Errorf("token: GET %s without it = %d, want 200", p, code)
		}
	}
	// Wrong tokens from this address: 10 are answered 401, then 429 with
	// Retry-After, the right token included.
	for i := range 10 {
		if code, _, _ := do(t, base+"/history.csv", fmt.Sprintf("Bearer guess-%02d-%s", i, testWebToken[:8])); code != http.StatusUnauthorized {
			t.Fatalf("token: wrong guess %d = %d, want 401", i, code)
		}
	}
	for _, auth := range []string{"Bearer guess-10-x", bearer} {
		code, hdr, _ := do(t, base+"/runs", auth)
		if code != http.StatusTooManyRequests || !regexp.MustCompile(`^[1-9][0-9]*$`).MatchString(hdr.Get("Retry-After")) {
			t.Errorf("token: after 10 wrong guesses = %d, Retry-After %q; want 429 with seconds", code, hdr.Get("Retry-After"))
		}
	}
	if code, _, _ := do(t, base+"/metrics", ""); code != http.StatusOK {
		t.Errorf("token: /metrics from a slowed address = %d, want 200", code)
	}
	wrong := logLines(t, tokened, "web view: wrong credentials")
	if len(wrong) != 10 || wrong[0]["source_addr"] == "" || wrong[0]["path"] != "/history.csv" {
		t.Errorf("token: %d wrong-credential lines (first %v), want 10 naming source and path", len(wrong), wrong)
	}
	if len(logLines(t, tokened, "web view: too many wrong credentials")) != 1 {
		t.Errorf("token: the slowdown is not logged once")
	}

	// 3. Explicitly open: anyone reads it, and start-up warns.
	opened := w.startServe("open", webOpenEnv+"=true")
	base = "http://" + dialable(serveAddr(t, opened))
	if code, _, body := do(t, base+"/runs", ""); code != http.StatusOK || !strings.Contains(body, fmt.Sprintf(`<a href="/runs/%d">`, run.ID)) {
		t.Errorf("open: GET /runs = %d, want 200 with the run", code)
	}
	warn := logLines(t, opened, "web view open without credentials")
	if len(warn) != 1 || warn[0]["level"] != "WARN" {
		t.Errorf("open: start-up warnings %v, want one", warn)
	}

	// No log holds a web credential or a presented guess.
	for _, p := range []*serveProc{closed, tokened, opened} {
		data, err := os.ReadFile(p.log)
		if err != nil {
			t.Fatal(err)
		}
		findSecrets(t, "serve's log", string(data), map[string]string{testWebToken: "the web token", "guess-0": "a presented guess",
			testWebToken[:8]: "part of the web token"})
		findSecrets(t, "serve's log", string(data), w.secrets())
	}
}

// serve's metrics are labelled by what happened, never by whom: every
// label of every migrator_ series is one of a closed set, and a call's
// target (app/machine) never becomes a label value, whatever the adapters
// report.
func TestMetricLabelsNameNoCustomer(t *testing.T) {
	m, err := metrics.New(metrics.Config{})
	if err != nil {
		t.Fatal(err)
	}
	const app, machine = "hermes-agent-acme", "e784079b449483"
	for _, c := range []callrec.Call{
		{Kind: "fly.update", Target: app + "/" + machine, Method: http.MethodPost, Status: 200, RequestID: "req-" + machine},
		{Kind: "gateway.begin", Target: app + "/" + machine, Method: http.MethodPost, Err: "dial tcp: " + app + ".internal: refused"},
	} {
		m.ObserveFly(c)
		m.ObserveGateway(c)
	}
	m.MachineDone(store.OutcomeMigrated)
	m.DrainEnded(true, store.DrainQuiesced, time.Minute)
	m.Peeked(orchestrator.PeekIdle)
	m.IdleWaitEnded(orchestrator.IdleFound, time.Second)
	m.AutoUpdateTick(orchestrator.AutoUpdateCreated)
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	allowed := map[string]bool{"state": true, "outcome": true, "quiet": true, "result": true, "kind": true, "code": true}
	var series int
	for _, f := range families {
		if !strings.HasPrefix(f.GetName(), "migrator_") {
			continue
		}
		for _, s := range f.GetMetric() {
			series++
			for _, l := range s.GetLabel() {
				if !allowed[l.GetName()] {
					t.Errorf("%s has label %s: not one of the closed set (state, outcome, quiet, result, kind, code)", f.GetName(), l.GetName())
				}
				if strings.Contains(l.GetValue(), app) || strings.Contains(l.GetValue(), machine) {
					t.Errorf("%s{%s=%q} names the customer", f.GetName(), l.GetName(), l.GetValue())
				}
			}
		}
	}
	if series < 20 {
		t.Errorf("only %d migrator_ series gathered: the check proves little", series)
	}
}
