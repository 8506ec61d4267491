package contracttest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/superfly/fly-go/tokens"

	"github.com/hermes-cloud/migrator/internal/callrec"
	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/drainsecret"
	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/internal/testkit/logbuf"
)

// timeScale: one simulated second lasts 10 ms.
const timeScale = 100

const (
	imageV1     = fleetsim.DefaultImage
	imageV2     = "registry.fly.io/hermes-agent:v2"
	imageBroken = "registry.fly.io/hermes-agent:broken"
	imageSick   = "registry.fly.io/hermes-agent:sick"
)

// world is one simulator and both adapters pointed at it, as cmd/ wires
// them, with every log line captured and every drain POST recorded.
type world struct {
	t     *testing.T
	sim   *fleetsim.Sim
	clk   clock.Clock
	fly   *flymachines.Client
	gw    *gateway.Client
	logs  *logbuf.Buffer
	posts *postRecorder
	// hc is for direct calls to the simulator (set-up and controls).
	hc    *http.Client
	calls *callrec.Log
	// app and id name the first machine of the first app.
	app, id string
}

type worldOpts struct {
	sim fleetsim.Config
	// realClock runs simulator and client on the wall clock (the burst row).
	realClock bool
	// flyWrap and gwWrap wrap the adapters' base transports (fault and
	// echo injection that the simulator cannot do itself).
	flyWrap func(http.RoundTripper) http.RoundTripper
	gwWrap  func(http.RoundTripper) http.RoundTripper
	flyCfg  func(*flymachines.Config)
	gwCfg   func(*gateway.Config)
}

func newWorld(t *testing.T, o worldOpts) *world {
	t.Helper()
	var clk clock.Clock = clock.NewScaled(time.Time{}, timeScale)
	if o.realClock {
		clk = clock.Real()
	}
	cfg := o.sim
	cfg.Clock = clk
	cfg.APISimTime = true
	if cfg.Seed == 0 {
		cfg.Seed = 7
	}
	if cfg.Apps == 0 {
		cfg.Apps = 2
	}
	sim, err := fleetsim.New(cfg)
	if err != nil {
		t.Fatalf("fleetsim.New: %v", err)
	}
	if err := sim.Start("127.0.0.1:0"); err != nil {
		t.Fatalf("fleetsim.Start: %v", err)
	}
	t.Cleanup(sim.Close)
	// Connections dialled but never used hold the server's Shutdown for
	// seconds: close every client's idle ones first (cleanups run LIFO).
	flyBT := http.DefaultTransport.(*http.Transport).Clone()
	gwBT := http.DefaultTransport.(*http.Transport).Clone()
	rawBT := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(func() {
		flyBT.CloseIdleConnections()
		gwBT.CloseIdleConnections()
		rawBT.CloseIdleConnections()
	})

	w := &world{t: t, sim: sim, clk: clk, logs: &logbuf.Buffer{}, calls: &callrec.Log{},
		hc: &http.Client{Transport: rawBT, Timeout: 10 * time.Second}}
	w.app = sim.Apps()[0]
	w.id = sim.MachineIDs(w.app)[0]
	w.posts = &postRecorder{key: sim.DrainKey()}
	log := slog.New(slog.NewTextHandler(w.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	flyBase := http.RoundTripper(flyBT)
	if o.flyWrap != nil {
		flyBase = o.flyWrap(flyBase)
	}
	fcfg := flymachines.Config{Token: sim.FlyToken(), BaseURL: sim.FlyBaseURL(), APIBaseURL: sim.URL(), Clock: clk, Logger: log, Transport: flyBase}
	if o.flyCfg != nil {
		o.flyCfg(&fcfg)
	}
	w.fly, err = flymachines.New(context.Background(), fcfg)
	if err != nil {
		t.Fatalf("flymachines.New: %v", err)
	}

	gwBase := http.RoundTripper(gwBT)
	if o.gwWrap != nil {
		gwBase = o.gwWrap(gwBase)
	}
	w.posts.next = gwBase
	gcfg := gateway.Config{URLTemplate: sim.GatewayURLTemplate(), DrainKey: sim.DrainKey(), Logger: log,
		Transport: w.posts, CallTimeout: 5 * time.Second, RetryMax: 3,
		RetryWaitMin: 5 * time.Millisecond, RetryWaitMax: 20 * time.Millisecond}
	if o.gwCfg != nil {
		o.gwCfg(&gcfg)
	}
	w.gw, err = gateway.New(gcfg)
	if err != nil {
		t.Fatalf("gateway.New: %v", err)
	}

	// Whatever a row does, no secret may reach a log line or an audit
	// record, and every drain POST must be well-formed.
	t.Cleanup(func() {
		w.assertNoSecrets(t, "captured slog output", w.logs.String())
		for _, c := range w.calls.Take() {
			w.assertNoSecrets(t, "callrec call", fmt.Sprintf("%+v", c))
		}
		for _, err := range w.posts.problems() {
			t.Errorf("drain POST broke the contract: %v", err)
		}
	})
	return w
}

// ctx is a bounded context recording the adapters' calls.
func (w *world) ctx(d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(callrec.WithLog(context.Background(), w.calls), d)
	w.t.Cleanup(cancel)
	return ctx
}

func (w *world) target() gateway.Target { return gateway.Target{App: w.app, MachineID: w.id} }

// secrets lists every spelling of a credential that must never be shown.
func (w *world) secrets() map[string]string {
	tok := w.sim.FlyToken()
	out := map[string]string{
		"fly token":          tok,
		"fly token stripped": tokens.StripAuthorizationScheme(tok),
		"drain key":          string(w.sim.DrainKey()),
	}
	for _, a := range w.sim.Apps() {
		out["drain secret of "+a] = drainsecret.Derive(w.sim.DrainKey(), a)
	}
	return out
}

func (w *world) assertNoSecrets(t *testing.T, where, s string) {
	t.Helper()
	for name, v := range w.secrets() {
		if v != "" && strings.Contains(s, v) {
			// Never print s: it holds the secret.
			t.Errorf("%s contains the %s", where, name)
		}
	}
}

// errText is everything an error could show: its message and its %+v dump.
func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error() + "\n" + fmt.Sprintf("%+v", err)
}

// simSleep lets d of simulated time pass.
func (w *world) simSleep(d time.Duration) { time.Sleep(w.clk.Wall(d)) }

// eventually polls cond until it holds, for at most limit of simulated time
// (plus a second of wall time for a loaded machine).
func (w *world) eventually(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(w.clk.Wall(limit) + time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s of simulated time", what, limit)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// status reads the gateway's /api/status or fails the test.
func (w *world) status(t *testing.T) gateway.Status {
	t.Helper()
	st, err := w.gw.Status(w.ctx(5*time.Second), w.target())
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	return st
}

// waitGatewayState polls /api/status until gateway_state is state.
func (w *world) waitGatewayState(t *testing.T, state string, limit time.Duration) gateway.Status {
	t.Helper()
	var st gateway.Status
	w.eventually(t, limit, "gateway_state "+state, func() bool {
		st = w.status(t)
		return st.State == state
	})
	return st
}

// recreate moves the machine to image as the orchestrator does: lease,
// update under the nonce, wait for the new instance, release.
func (w *world) recreate(t *testing.T, image string) flymachines.UpdateResult {
	t.Helper()
	ctx := w.ctx(20 * time.Second)
	l, err := w.fly.AcquireLease(ctx, w.app, w.id, 5*time.Minute, "contract test")
	if err != nil {
		t.Fatalf("AcquireLease: %v", err)
	}
	res, err := w.fly.UpdateImage(ctx, w.app, w.id, image, l.Nonce)
	if err != nil {
		t.Fatalf("UpdateImage: %v", err)
	}
	if _, err := w.fly.WaitForInstance(ctx, w.app, w.id, res.ToInstanceID, image); err != nil {
		t.Fatalf("WaitForInstance: %v", err)
	}
	if err := w.fly.ReleaseLease(ctx, w.app, w.id, l.Nonce); err != nil {
		t.Fatalf("ReleaseLease: %v", err)
	}
	return res
}

// lastShutdown is the machine's latest recorded SIGTERM.
func (w *world) lastShutdown(t *testing.T) fleetsim.Shutdown {
	t.Helper()
	var last *fleetsim.Shutdown
	for _, sd := range w.sim.Shutdowns() {
		if sd.App == w.app && sd.MachineID == w.id {
			last = &sd
		}
	}
	if last == nil {
		t.Fatal("no shutdown recorded for the machine")
	}
	return *last
}

// rawFly calls the Machines API directly with the token, for set-up the
// adapter does not offer (stop) and for control rows. It returns the status.
func (w *world) rawFly(t *testing.T, method, path string) int {
	t.Helper()
	req, err := http.NewRequest(method, w.sim.URL()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+w.sim.FlyToken())
	resp, err := w.hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// ---- transports ------------------------------------------------------------

// rtFunc adapts a function to http.RoundTripper.
type rtFunc func(*http.Request) (*http.Response, error)

func (f rtFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// jsonResponse is a synthetic answer, as a proxy or a flaky network gives.
func jsonResponse(req *http.Request, code int, body string) *http.Response {
	return &http.Response{
		StatusCode: code, Status: fmt.Sprintf("%d %s", code, http.StatusText(code)),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:  http.Header{"Content-Type": []string{"application/json"}},
		Body:    io.NopCloser(strings.NewReader(body)),
		Request: req, ContentLength: int64(len(body)),
	}
}

// isUpdate: POST /v1/apps/{app}/machines/{id}, the update route.
func isUpdate(r *http.Request) bool {
	segs := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	return r.Method == http.MethodPost && len(segs) == 5 && segs[0] == "v1" && segs[3] == "machines"
}

// isGet: GET /v1/apps/{app}/machines/{id}.
func isGet(r *http.Request) bool {
	segs := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	return r.Method == http.MethodGet && len(segs) == 5 && segs[0] == "v1" && segs[3] == "machines"
}

// postRecorder sees every request of the gateway client and keeps, for each
// POST, what the contract constrains: the body, its content type, and
// whether the bearer was the app's derived secret (never the value).
type postRecorder struct {
	next http.RoundTripper
	key  []byte

	mu    sync.Mutex
	posts []recordedPost
}

type recordedPost struct {
	App         string
	ContentType string
	BearerOK    bool
	Body        []byte
}

func (p *postRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodPost {
		var body []byte
		if req.Body != nil {
			var err error
			if body, err = io.ReadAll(req.Body); err != nil {
				return nil, err
			}
			req.Body.Close()
			req.Body = io.NopCloser(bytes.NewReader(body))
		}
		// /gateway/{app}/{machine_id}/api/gateway/drain
		segs := strings.Split(strings.Trim(req.URL.Path, "/"), "/")
		app := ""
		if len(segs) >= 2 {
			app = segs[1]
		}
		want := "Bearer " + drainsecret.Derive(p.key, app)
		p.mu.Lock()
		p.posts = append(p.posts, recordedPost{App: app, ContentType: req.Header.Get("Content-Type"),
			BearerOK: req.Header.Get("Authorization") == want, Body: body})
		p.mu.Unlock()
	}
	return p.next.RoundTrip(req)
}

func (p *postRecorder) all() []recordedPost {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]recordedPost(nil), p.posts...)
}

// problems checks every recorded POST against the contract: a JSON object
// with a string action "drain" or "cancel"; a drain carries
// suppress_notification as a JSON boolean; no other field; Content-Type
// application/json; the app's derived bearer.
func (p *postRecorder) problems() []error {
	var out []error
	for i, post := range p.all() {
		if err := checkPost(post); err != nil {
			out = append(out, fmt.Errorf("POST #%d: %w", i+1, err))
		}
	}
	return out
}

func checkPost(post recordedPost) error {
	if post.ContentType != "application/json" {
		return fmt.Errorf("Content-Type %q", post.ContentType)
	}
	if !post.BearerOK {
		return fmt.Errorf("authorization is not the bearer derived for app %s", post.App)
	}
	var body map[string]any
	dec := json.NewDecoder(bytes.NewReader(post.Body))
	if err := dec.Decode(&body); err != nil || body == nil {
		return fmt.Errorf("body %q is not a JSON object (%v)", post.Body, err)
	}
	if dec.More() {
		return fmt.Errorf("body %q has trailing data", post.Body)
	}
	action, ok := body["action"].(string)
	if !ok {
		return fmt.Errorf("body %q: action is not a string", post.Body)
	}
	switch action {
	case "drain":
		if _, ok := body["suppress_notification"].(bool); !ok {
			return fmt.Errorf("body %q: suppress_notification is not a JSON boolean", post.Body)
		}
		if len(body) != 2 {
			return fmt.Errorf("body %q: fields beyond action and suppress_notification", post.Body)
		}
	case "cancel", gateway.ProbeAction:
		if len(body) != 1 {
			return fmt.Errorf("body %q: a %s carries only the action", post.Body, action)
		}
	default:
		return fmt.Errorf("body %q: action %q", post.Body, action)
	}
	return nil
}
