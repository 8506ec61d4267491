package webview_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/chromedp"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/internal/webview"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
	"github.com/hermes-cloud/migrator/store/storetest"
)

// screenshotEnv, when set, names a file the browser test also writes its
// screenshot to (the picture of the run page in docs/operations.md).
const screenshotEnv = "MIGRATOR_WEBVIEW_SCREENSHOT"

// chromium finds Debian's chromium (or another Chrome). Without one the test
// skips, except in CI (CI=true), where it fails: CI must not pass without it.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium not found, and CI=true: install it (.ci/setup does, with apt-get install chromium)")
	}
	t.Skip("chromium not installed (apt-get install chromium); CI=true makes this a failure")
	return ""
}

// The run page of a sandbox-like run in flight (the fleet simulator, the
// orchestrator with River, a real Postgres) in a real headless browser: the
// timeline and progress advance while it watches, a click on a row shows
// that machine's audit events, and a screenshot is saved.
func TestBrowserRunPageLive(t *testing.T) {
	chrome := chromium(t)
	ctx := context.Background()

	// The fleet: 24 agents on a clock 30× the wall's, a third busy, three in
	// a task of a few simulated minutes, one whose gateway crashed.
	clk := clock.NewScaled(time.Now(), 30)
	sim, err := fleetsim.New(fleetsim.Config{Apps: 24, Seed: 1, Clock: clk, APISimTime: true,
		Workload: fleetsim.Workload{BusyFraction: 0.3}})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	ms := sim.Machines()
	sort.Slice(ms, func(i, j int) bool { return ms[i].App < ms[j].App })
	for i, m := range ms[:3] {
		sim.AddTurn(m.App, m.ID, fleetsim.Turn{Session: fmt.Sprintf("task-%d", i), Duration: time.Duration(3+i) * time.Minute})
	}
	sim.SetGatewayDown(ms[len(ms)-1].App, ms[len(ms)-1].ID, true)

	_, pool := storetest.NewDB(t)
	st := store.New(pool)
	log := slog.New(slog.DiscardHandler)
	fly, err := flymachines.New(ctx, flymachines.Config{Token: sim.FlyToken(), BaseURL: sim.FlyBaseURL(), Clock: clk, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{URLTemplate: sim.GatewayURLTemplate(), DrainKey: sim.DrainKey(), Logger: log,
		RetryWaitMin: 10 * time.Millisecond, RetryWaitMax: 50 * time.Millisecond, RetryMax: 2})
	if err != nil {
		t.Fatal(err)
	}
	orch, err := orchestrator.New(orchestrator.Config{PollInterval: 2 * time.Second, LeaseTTL: 2 * time.Minute,
		VerifyTimeout: 2 * time.Minute, WaitStep: 5 * time.Second, GatewayGrace: 30 * time.Second, Clock: clk, Logger: log},
		st, fly, gw, policy.Default())
	if err != nil {
		t.Fatal(err)
	}
	client, err := orch.NewRiverClient(orchestrator.RiverOptions{Workers: 20, FetchPollInterval: 50 * time.Millisecond,
		FillEvery: time.Second, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	if err := client.Start(rctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		_ = client.StopAndCancel(sctx)
		cancel()
	})

	// The view requires credentials, as serve's does beyond loopback: the
	// browser is challenged for basic auth and answers as a person would in
	// its prompt (below); the page's own requests then carry them.
	const user, password = "oncall", "browser-test-pass-0123"
	var logs strings.Builder
	var logMu sync.Mutex
	viewLog := slog.New(slog.NewJSONHandler(writerFunc(func(p []byte) (int, error) {
		logMu.Lock()
		defer logMu.Unlock()
		return logs.Write(p)
	}), nil))
	view, err := webview.New(webview.Config{Store: st.Q(), Logger: viewLog, PollInterval: 500 * time.Millisecond,
		BasicUser: user, BasicPassword: password})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(view)
	t.Cleanup(srv.Close)
	if res, err := http.Get(srv.URL + "/runs"); err != nil || res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET /runs without credentials: %v %v, want 401", res, err)
	} else {
		res.Body.Close()
	}

	run, _, err := orch.CreateRun(ctx, orchestrator.RunRequest{Cause: policy.AutoUpdate, Image: "registry.fly.io/hermes-agent:v2",
		Selector: store.Selector{Org: sim.Org()}, MaxUnavailable: "4", FailureThreshold: 2, DeadlineOverride: 10 * time.Minute,
		RequestedBy: "browser test", Reason: "the web view's screenshot"}, nil)
	if err != nil {
		t.Fatal(err)
	}

	actx, acancel := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1280, 1000))...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	bctx, tcancel := context.WithTimeout(bctx, 2*time.Minute)
	defer tcancel()

	// Answer the view's basic-auth challenges; let every other request
	// through (with Fetch enabled, Chrome pauses each one).
	var challenges atomic.Int32
	paused, authRequired := chromedp.Events(bctx, fetch.RequestPaused), chromedp.Events(bctx, fetch.AuthRequired)
	go func() {
		for ev, err := range paused {
			if err != nil {
				return
			}
			_, _ = chromedp.Call(bctx, fetch.ContinueRequest, fetch.ContinueRequestParams{RequestID: ev.RequestID})
		}
	}()
	go func() {
		for ev, err := range authRequired {
			if err != nil {
				return
			}
			challenges.Add(1)
			_, _ = chromedp.Call(bctx, fetch.ContinueWithAuth, fetch.ContinueWithAuthParams{RequestID: ev.RequestID,
				AuthChallengeResponse: &fetch.AuthChallengeResponse{Response: fetch.AuthChallengeResponseResponseProvideCredentials,
					Username: user, Password: password}})
		}
	}()
	handleAuth := true
	if _, err := chromedp.Call(bctx, fetch.Enable, fetch.EnableParams{HandleAuthRequests: &handleAuth}); err != nil {
		t.Fatalf("enable the browser's auth handling: %v", err)
	}

	// page reads what the page shows: its last event, done count and state.
	type page struct {
		LastEvent int64  `json:"last"`
		Done      int    `json:"done"`
		Total     int    `json:"total"`
		State     string `json:"state"`
		Rows      string `json:"rows"`
		Loaded    int    `json:"loaded"` // timeline responses the page applied
	}
	read := func() page {
		p, err := chromedp.Run(bctx, chromedp.Evaluate[page](`({
			last: Number(document.getElementById("run").dataset.lastEvent || 0),
			done: Number(document.getElementById("prog").value),
			total: Number(document.getElementById("prog").max),
			state: document.getElementById("run-state").textContent,
			rows: document.getElementById("tl-count").textContent,
			loaded: Number(document.getElementById("run").dataset.loaded || 0)})`))
		if err != nil {
			t.Fatalf("read the page: %v", err)
		}
		return p
	}
	waitFor := func(what string, ok func(page) bool) page {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for {
			p := read()
			if ok(p) {
				return p
			}
			if time.Now().After(deadline) {
				t.Fatalf("the page never showed %s; it shows %+v", what, p)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	if err := chromedp.Do(bctx, chromedp.Navigate(fmt.Sprintf("%s/runs/%d", srv.URL, run.ID)),
		chromedp.WaitVisible(chromedp.ID("tl"))); err != nil {
		t.Fatalf("open the run page: %v", err)
	}
	first := waitFor("the timeline loaded", func(p page) bool { return p.Loaded >= 1 })
	if first.Rows != "24 of 24 machines" {
		t.Errorf("timeline rows: %q", first.Rows)
	}
	// In flight, the page moves on by itself: more events, more machines done.
	later := waitFor("the run advance", func(p page) bool {
		return p.Loaded > first.Loaded && p.LastEvent > first.LastEvent && p.Done > first.Done
	})
	t.Logf("page advanced: %+v → %+v", first, later)
	// For the picture: about half done, still running (or over, if the
	// machine was too slow to catch it in between).
	mid := waitFor("half the run done", func(p page) bool { return p.Done >= p.Total/2 || p.State != "running" })

	// Click the first row: the panel lists that machine's audit events.
	rect, err := chromedp.Run(bctx, chromedp.Evaluate[[]float64](`(() => { const r = document.getElementById("tl").getBoundingClientRect();
		window.scrollTo(0, r.top + window.scrollY - 200); const q = document.getElementById("tl").getBoundingClientRect();
		return [q.left, q.top]; })()`))
	if err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(bctx, chromedp.MouseClickXY(rect[0]+300, rect[1]+20+7),
		chromedp.WaitVisible(chromedp.CSS("#panel-events li"))); err != nil {
		t.Fatalf("click a timeline row: %v", err)
	}
	panelText, err := chromedp.Run(bctx, chromedp.Text(chromedp.ID("panel")))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(panelText, "machine.") || strings.Contains(panelText, "could not load") {
		t.Errorf("the audit panel shows %q", panelText)
	}
	if err := chromedp.Do(bctx, chromedp.Click(chromedp.ID("panel-close"))); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Run(bctx, chromedp.Evaluate[any](`window.scrollTo(0, 0)`)); err != nil && !errors.Is(err, chromedp.ErrJSUndefined) {
		t.Fatal(err)
	}
	png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(t.TempDir(), "run-page.png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of the run page at %+v: %s", mid, path)
	if out := os.Getenv(screenshotEnv); out != "" {
		if err := os.WriteFile(out, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if len(png) < 10_000 {
		t.Errorf("screenshot is %d bytes: a blank page?", len(png))
	}
	// The page was behind the credentials: the browser was asked for them,
	// and never presented wrong ones.
	if n := challenges.Load(); n < 1 {
		t.Errorf("the browser was never challenged for credentials")
	}
	logMu.Lock()
	defer logMu.Unlock()
	if strings.Contains(logs.String(), "wrong credentials") || strings.Contains(logs.String(), password) {
		t.Errorf("the view's log:\n%s", logs.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
