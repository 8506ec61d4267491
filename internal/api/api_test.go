package api_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hermes-cloud/migrator/internal/api"
	"github.com/hermes-cloud/migrator/internal/authlimit"
	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/imagepin"
	"github.com/hermes-cloud/migrator/internal/seal"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/internal/testkit/logbuf"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
	"github.com/hermes-cloud/migrator/store/storetest"
)

func TestMain(m *testing.M) { storetest.Main(m) }

// The API's tests drive the real handler over HTTP (httptest's server)
// against a real PostgreSQL, a real orchestrator and the fleet
// simulator, and hold every answer to the OpenAPI document with
// kin-openapi's openapi3filter (JSON Schema 2020-12, as OpenAPI 3.1 has
// it).

// secretValue is the env value every test sets: it must never come back.
const secretValue = "7071914:AAEh-s3cr3t-b0t-t0k3n-never-shown"

type world struct {
	t      *testing.T
	sim    *fleetsim.Sim
	st     *store.Store
	pool   *pgxpool.Pool
	orch   *orchestrator.Orchestrator
	key    *seal.Key
	srv    *httptest.Server
	logs   *logbuf.Buffer
	nas    string // token of NAS: env-edit and profile-change only
	ops    string // token of OPS: every cause
	doc    *openapi3.T
	router routers.Router

	mu   sync.Mutex
	seen map[string]map[int]bool // operation → statuses answered
	// bodies are every answer's body, to look for the env value.
	bodies [][]byte
}

func randomToken(t *testing.T) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

type worldOpts struct {
	limiter *authlimit.Limiter
	apps    int
	workers bool // start River workers (the runs execute)
	river   func(*orchestrator.RiverOptions, *store.Store)
}

func newWorld(t *testing.T, o worldOpts) *world {
	t.Helper()
	if o.apps == 0 {
		o.apps = 4
	}
	clk := clock.NewScaled(time.Date(2026, 11, 24, 3, 0, 0, 0, time.UTC), 50)
	sim, err := fleetsim.New(fleetsim.Config{Apps: o.apps, Seed: 1, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	_, pool := storetest.NewDB(t)
	raw := make([]byte, seal.KeyBytes)
	_, _ = rand.Read(raw)
	key, err := seal.NewKey("test seal key", raw)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logbuf.Buffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx := context.Background()
	fly, err := flymachines.New(ctx, flymachines.Config{Token: sim.FlyToken(), BaseURL: sim.FlyBaseURL(), Clock: clk, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{URLTemplate: sim.GatewayURLTemplate(), DrainKey: sim.DrainKey(), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	st := store.New(pool)
	orch, err := orchestrator.New(orchestrator.Config{FleetCap: 10, PollInterval: 2 * time.Second, LeaseTTL: 2 * time.Minute,
		VerifyTimeout: 2 * time.Minute, WaitStep: 5 * time.Second, GatewayGrace: 30 * time.Second, Clock: clk, Logger: log,
		Sealer: key}, st, fly, gw, policy.Default())
	if err != nil {
		t.Fatal(err)
	}
	ropts := orchestrator.RiverOptions{Workers: 20, FetchPollInterval: 20 * time.Millisecond, FillEvery: time.Second,
		Logger: slog.New(slog.DiscardHandler)}
	if o.river != nil {
		o.river(&ropts, st)
	}
	client, err := orch.NewRiverClient(ropts)
	if err != nil {
		t.Fatal(err)
	}
	if o.workers {
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
	}
	w := &world{t: t, sim: sim, st: st, pool: pool, orch: orch, key: key, logs: logs, nas: randomToken(t), ops: randomToken(t),
		seen: map[string]map[int]bool{}}
	pin := imagepin.New(imagepin.Config{FlyToken: sim.FlyToken(), FlyRegistryURL: sim.URL()})
	a, err := api.New(api.Config{Runs: orch, Store: api.StoreReader(st), Digest: key, Pin: pin.Resolve, Logger: log, Limiter: o.limiter,
		Tokens: []api.Token{
			{Name: "NAS", Secret: w.nas, Causes: []policy.Cause{policy.EnvEdit, policy.ProfileChange}},
			{Name: "OPS", Secret: w.ops},
		}})
	if err != nil {
		t.Fatal(err)
	}
	w.srv = httptest.NewServer(a)
	t.Cleanup(w.srv.Close)
	w.doc, w.router = loadDoc(t)
	return w
}

func loadDoc(t *testing.T) (*openapi3.T, routers.Router) {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(api.OpenAPI)
	if err != nil {
		t.Fatalf("load openapi.yaml: %v", err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		t.Fatalf("openapi.yaml is not a valid OpenAPI document: %v", err)
	}
	if doc.OpenAPI != "3.1.0" {
		t.Fatalf("openapi.yaml is OpenAPI %s, want 3.1.0", doc.OpenAPI)
	}
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return doc, router
}

// answer is one HTTP exchange.
type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(a.body, &m); err != nil {
		t.Fatalf("answer %d is not a JSON object: %v: %s", a.status, err, a.body)
	}
	return m
}

func (a answer) id(t *testing.T) int64 {
	t.Helper()
	v, ok := a.json(t)["id"].(float64)
	if !ok {
		t.Fatalf("answer %d has no id: %s", a.status, a.body)
	}
	return int64(v)
}

type call struct {
	method, path, token string
	body                any // marshalled unless []byte or string
	header              map[string]string
	// validRequest: the request is one the document accepts (checked
	// too); the others are sent as bad input on purpose.
	validRequest bool
}

// do sends c to the server and validates the answer against the
// document: its operation must be there, and its status, headers and
// body must be what the document says for that status.
func (w *world) do(c call) answer {
	w.t.Helper()
	var raw []byte
	switch b := c.body.(type) {
	case nil:
	case []byte:
		raw = b
	case string:
		raw = []byte(b)
	default:
		var err error
		if raw, err = json.Marshal(b); err != nil {
			w.t.Fatal(err)
		}
	}
	req, err := http.NewRequest(c.method, w.srv.URL+c.path, bytes.NewReader(raw))
	if err != nil {
		w.t.Fatal(err)
	}
	if raw != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		w.t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		w.t.Fatal(err)
	}
	out := answer{status: res.StatusCode, header: res.Header, body: body}

	// The document's operation for this request.
	vreq, _ := http.NewRequest(c.method, c.path, bytes.NewReader(raw))
	vreq.Header = req.Header.Clone()
	route, params, err := w.router.FindRoute(vreq)
	if err != nil {
		w.t.Fatalf("%s %s: the document has no such operation: %v", c.method, c.path, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	if c.validRequest {
		if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
			w.t.Errorf("%s %s: the request the test sends as valid is not valid by the document: %v", c.method, c.path, err)
		}
	}
	rin := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: res.StatusCode, Header: res.Header,
		Body: io.NopCloser(bytes.NewReader(body)), Options: &openapi3filter.Options{IncludeResponseStatus: true}}
	if err := openapi3filter.ValidateResponse(context.Background(), rin); err != nil {
		w.t.Errorf("%s %s → %d: the answer does not match the document: %v\n%s", c.method, c.path, res.StatusCode, err, body)
	}
	w.mu.Lock()
	op := route.Operation.OperationID
	if w.seen[op] == nil {
		w.seen[op] = map[int]bool{}
	}
	w.seen[op][res.StatusCode] = true
	w.bodies = append(w.bodies, body)
	w.mu.Unlock()
	return out
}

func (w *world) expect(a answer, status int, field string) map[string]any {
	w.t.Helper()
	if a.status != status {
		w.t.Fatalf("status %d, want %d: %s", a.status, status, a.body)
	}
	m := a.json(w.t)
	if field != "" && m["field"] != field {
		w.t.Fatalf("field %v, want %q: %s", m["field"], field, a.body)
	}
	return m
}

func (w *world) countRuns() int {
	w.t.Helper()
	var n int
	if err := w.pool.QueryRow(context.Background(), `SELECT count(*) FROM runs`).Scan(&n); err != nil {
		w.t.Fatal(err)
	}
	return n
}

func app(n int) string { return fmt.Sprintf("%s%d", fleetsim.DefaultAppPrefix, n) }

// TestRoutesMatchTheDocument: every route the API serves is an operation
// of the document, and every operation of the document is served.
func TestRoutesMatchTheDocument(t *testing.T) {
	doc, _ := loadDoc(t)
	served := map[string]bool{}
	for _, r := range api.Routes() {
		for _, m := range r.Methods {
			served[m+" "+r.Pattern] = true
		}
	}
	documented := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for m := range item.Operations() {
			documented[m+" "+path] = true
		}
	}
	for k := range served {
		if !documented[k] {
			t.Errorf("%s is served but not in openapi.yaml", k)
		}
	}
	for k := range documented {
		if !served[k] {
			t.Errorf("%s is in openapi.yaml but not served", k)
		}
	}
	if len(served) < 5 {
		t.Fatalf("only %d routes: %v", len(served), served)
	}
}

// TestAPI drives every route through its answers (201, 200, 400, 401,
// 403, 404, 409, 413, 415, 422, 429) and validates each against the
// document; bad input writes nothing; the env value never comes back.
func TestAPI(t *testing.T) {
	w := newWorld(t, worldOpts{limiter: authlimit.New(time.Hour, 5, 100)})
	create := func(token string, body any, key string, valid bool) answer {
		c := call{method: http.MethodPost, path: "/api/v1/runs", token: token, body: body, validRequest: valid}
		if key != "" {
			c.header = map[string]string{"Idempotency-Key": key}
		}
		return w.do(c)
	}
	edit := map[string]any{"cause": "env-edit", "apps": []string{app(1)}, "env": map[string]string{"TELEGRAM_BOT_TOKEN": secretValue},
		"unset_env": []string{"OLD_FLAG"}, "reason": "customer 4711 edited their bot token"}

	// The document itself, without a token.
	doc := w.do(call{method: http.MethodGet, path: "/api/v1/openapi.yaml"})
	if doc.status != http.StatusOK || !bytes.Equal(doc.body, api.OpenAPI) {
		t.Fatalf("openapi.yaml: %d", doc.status)
	}

	// Bad input: 400 naming the field, nothing written.
	before := w.countRuns()
	for _, tc := range []struct {
		body  any
		field string
	}{
		{map[string]any{"apps": []string{app(1)}, "restart": true}, "cause"},
		{map[string]any{"cause": "no-such-cause", "apps": []string{app(1)}, "restart": true}, "cause"},
		{map[string]any{"cause": "env-edit", "restart": true}, "apps"},
		{map[string]any{"cause": "env-edit", "apps": []string{"Not An App"}, "restart": true}, "apps"},
		{map[string]any{"cause": "env-edit", "apps": []string{app(1)}}, "change"},
		{map[string]any{"cause": "env-edit", "apps": []string{app(1)}, "env": map[string]string{"1BAD": secretValue}}, "env"},
		{map[string]any{"cause": "env-edit", "apps": []string{app(1)}, "env": map[string]string{"FLY_REGION": secretValue}}, "env"},
		{map[string]any{"cause": "env-edit", "apps": []string{app(1)}, "env": map[string]any{"K": 7}}, "env"},
		{map[string]any{"cause": "env-edit", "apps": []string{app(1)}, "env": map[string]string{"K": secretValue}, "unset_env": []string{"K"}}, "unset_env"},
		{map[string]any{"cause": "env-edit", "apps": []string{app(1)}, "secrets_version": -1}, "secrets_version"},
		{map[string]any{"cause": "env-edit", "apps": []string{app(1)}, "image": "Not A Ref!!"}, "image"},
		{map[string]any{"cause": "env-edit", "apps": []string{app(1)}, "restart": true, "colour": "blue"}, "colour"},
		{map[string]any{"cause": "env-edit", "apps": []string{app(1)}, "restart": true, "reason": "a\x1b[2Jb"}, "reason"},
		{map[string]any{"cause": "env-edit", "apps": []string{"hermes-agent-999"}, "restart": true}, "apps"},
	} {
		m := w.expect(create(w.nas, tc.body, "", false), http.StatusBadRequest, tc.field)
		if s, _ := m["error"].(string); s == "" || strings.Contains(s, "\n") {
			t.Errorf("error %q: want one line", s)
		}
	}
	// Not JSON at all, with a value in it: the decoder's message would
	// quote it; ours does not.
	w.expect(create(w.nas, `{"cause": "env-edit", "env": {"K": "`+secretValue+`"`, "", false), http.StatusBadRequest, "")
	w.expect(create(w.nas, `{"cause": "env-edit"} {}`, "", false), http.StatusBadRequest, "")
	w.expect(create(w.nas, edit, "has space", false), http.StatusBadRequest, "Idempotency-Key")
	// Too big: 413.
	huge := map[string]any{"cause": "env-edit", "apps": []string{app(1)}, "env": map[string]string{"K": strings.Repeat("x", 70<<10)}}
	w.expect(create(w.nas, huge, "", false), http.StatusRequestEntityTooLarge, "")
	// Not JSON: 415.
	w.expect(w.do(call{method: http.MethodPost, path: "/api/v1/runs", token: w.nas, body: "cause=env-edit",
		header: map[string]string{"Content-Type": "application/x-www-form-urlencoded"}}), http.StatusUnsupportedMediaType, "")
	// A cause the token may not ask for: 403, nothing written.
	w.expect(create(w.nas, map[string]any{"cause": "image-migration", "apps": []string{app(1)}, "image": "registry.fly.io/hermes-agent:v9"},
		"", true), http.StatusForbidden, "cause")
	// No token, an unknown one: 401.
	for _, tok := range []string{"", randomToken(t)} {
		a := create(tok, edit, "", true)
		w.expect(a, http.StatusUnauthorized, "")
		if !strings.HasPrefix(a.header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("401 without a Bearer challenge: %v", a.header)
		}
	}
	if n := w.countRuns(); n != before {
		t.Fatalf("bad requests wrote %d runs", n-before)
	}

	// Created: 201 with the run, the change by names only.
	a := create(w.nas, edit, "customer-4711-edit-1", true)
	m := w.expect(a, http.StatusCreated, "")
	id := a.id(t)
	if loc := a.header.Get("Location"); loc != fmt.Sprintf("/api/v1/runs/%d", id) {
		t.Errorf("Location %q", loc)
	}
	ch, _ := m["change"].(map[string]any)
	if fmt.Sprint(ch["env_set"]) != "[TELEGRAM_BOT_TOKEN]" || fmt.Sprint(ch["env_unset"]) != "[OLD_FLAG]" {
		t.Errorf("change %v", ch)
	}
	if m["requested_by"] != "api:NAS" || m["lane"] != "customer" || m["idempotency_key"] != "customer-4711-edit-1" ||
		fmt.Sprint(m["apps"]) != "["+app(1)+"]" {
		t.Errorf("run %s", a.body)
	}
	ms, _ := m["machines"].([]any)
	if len(ms) != 1 {
		t.Fatalf("machines %v", ms)
	}
	// Retried: 200 with the same run; the same key with another body: 422;
	// the same key from another token: its own run.
	again := create(w.nas, edit, "customer-4711-edit-1", true)
	w.expect(again, http.StatusOK, "")
	if again.id(t) != id {
		t.Fatalf("retry answered run %d, want %d", again.id(t), id)
	}
	changed := map[string]any{"cause": "env-edit", "apps": []string{app(1)}, "env": map[string]string{"TELEGRAM_BOT_TOKEN": secretValue + "x"},
		"unset_env": []string{"OLD_FLAG"}, "reason": "customer 4711 edited their bot token"}
	w.expect(create(w.nas, changed, "customer-4711-edit-1", true), http.StatusUnprocessableEntity, "Idempotency-Key")
	other := create(w.ops, map[string]any{"cause": "profile-change", "apps": []string{app(2)}, "restart": true}, "customer-4711-edit-1", true)
	w.expect(other, http.StatusCreated, "")
	if other.id(t) == id {
		t.Fatal("two tokens' keys collided")
	}
	// A fleet run of OPS with an image, pinned to its digest.
	img := create(w.ops, map[string]any{"cause": "image-migration", "apps": []string{app(3), app(4)}, "image": "registry.fly.io/hermes-agent:v9"}, "", true)
	im := w.expect(img, http.StatusCreated, "")
	if ich, _ := im["change"].(map[string]any); !strings.Contains(fmt.Sprint(ich["image"]), "@sha256:") || im["lane"] != "fleet" {
		t.Errorf("image run %s: want the image pinned to a digest, the fleet lane", img.body)
	}

	// Read: 200, 404; list by app, newest first, with paging.
	got := w.expect(w.do(call{method: http.MethodGet, path: fmt.Sprintf("/api/v1/runs/%d", id), token: w.nas, validRequest: true}), http.StatusOK, "")
	if ms, _ := got["machines"].([]any); len(ms) != 1 || ms[0].(map[string]any)["waiting_for_idle"] != nil {
		t.Fatalf("run %d before any look: want one machine, not waiting for idle: %v", id, got["machines"])
	}
	// Its agent found busy: the answer says the change waits for an idle moment, and since when.
	if _, err := w.pool.Exec(context.Background(), `UPDATE machine_migrations SET state = 'pending', started_at = NULL, idle_watch = true,
		first_peek_at = '2026-12-07T10:00:00Z', last_peek_at = '2026-12-07T10:01:00Z', peeks = 2 WHERE run_id = $1`, id); err != nil {
		t.Fatal(err)
	}
	got = w.expect(w.do(call{method: http.MethodGet, path: fmt.Sprintf("/api/v1/runs/%d", id), token: w.nas, validRequest: true}), http.StatusOK, "")
	if m := got["machines"].([]any)[0].(map[string]any); fmt.Sprint(m["waiting_for_idle"]) != "map[last_look:2026-12-07T10:01:00Z since:2026-12-07T10:00:00Z until:2026-12-07T10:10:00Z]" {
		t.Errorf("busy agent's machine: waiting_for_idle %v, want since 10:00:00, last look 10:01:00, until 10:10:00 (env-edit's idle wait, 10m) (%v)", m["waiting_for_idle"], m)
	}
	w.expect(w.do(call{method: http.MethodGet, path: "/api/v1/runs/999999", token: w.nas, validRequest: true}), http.StatusNotFound, "")
	w.expect(w.do(call{method: http.MethodGet, path: "/api/v1/runs/0", token: w.nas}), http.StatusNotFound, "")
	list := w.expect(w.do(call{method: http.MethodGet, path: "/api/v1/runs?app=" + app(1), token: w.nas, validRequest: true}), http.StatusOK, "")
	runs, _ := list["runs"].([]any)
	if len(runs) != 1 || runs[0].(map[string]any)["id"].(float64) != float64(id) {
		t.Errorf("runs of %s: %v", app(1), list)
	}
	page := w.expect(w.do(call{method: http.MethodGet, path: "/api/v1/runs?limit=1", token: w.nas, validRequest: true}), http.StatusOK, "")
	if prs, _ := page["runs"].([]any); len(prs) != 1 || page["next_before"] == nil {
		t.Errorf("a page of 1 of 3 runs: %v", page)
	}
	w.expect(w.do(call{method: http.MethodGet, path: "/api/v1/runs?requested_by=api:NAS&state=running&cause=env-edit", token: w.nas, validRequest: true}),
		http.StatusOK, "")
	w.expect(w.do(call{method: http.MethodGet, path: "/api/v1/runs?limit=1000", token: w.nas}), http.StatusBadRequest, "limit")
	w.expect(w.do(call{method: http.MethodGet, path: "/api/v1/runs?colour=blue", token: w.nas}), http.StatusBadRequest, "colour")

	// Cancel: NAS may not cancel OPS's image run (403); it cancels its
	// own (200), and again (409); an unknown run is 404.
	w.expect(w.do(call{method: http.MethodPost, path: fmt.Sprintf("/api/v1/runs/%d/cancel", img.id(t)), token: w.nas, validRequest: true}),
		http.StatusForbidden, "cause")
	c := w.expect(w.do(call{method: http.MethodPost, path: fmt.Sprintf("/api/v1/runs/%d/cancel", id), token: w.nas, validRequest: true}),
		http.StatusOK, "")
	if st := c["state"]; st != "cancelled" && st != "cancelling" {
		t.Errorf("cancelled run is %v", st)
	}
	w.expect(w.do(call{method: http.MethodPost, path: fmt.Sprintf("/api/v1/runs/%d/cancel", id), token: w.nas, validRequest: true}),
		http.StatusConflict, "")
	w.expect(w.do(call{method: http.MethodPost, path: "/api/v1/runs/424242/cancel", token: w.nas, validRequest: true}), http.StatusNotFound, "")

	// Wrong tokens past the burst: 429 with Retry-After, even for the
	// right token from that source until it refills.
	for range 5 {
		w.do(call{method: http.MethodGet, path: "/api/v1/runs", token: randomToken(t)})
	}
	lim := w.do(call{method: http.MethodGet, path: "/api/v1/runs", token: w.nas})
	w.expect(lim, http.StatusTooManyRequests, "")
	if lim.header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}

	// Every answer the brief names was given and matched the document.
	for op, codes := range map[string][]int{
		"createRun": {200, 201, 400, 401, 403, 413, 415, 422},
		"getRun":    {200, 404},
		"listRuns":  {200, 400, 429},
		"cancelRun": {200, 403, 404, 409},
		"openAPI":   {200},
	} {
		for _, code := range codes {
			if !w.seen[op][code] {
				t.Errorf("%s never answered %d (answered %v)", op, code, keys(w.seen[op]))
			}
		}
	}
	// The env value: in no answer, no log line, and in Postgres only sealed.
	for _, b := range w.bodies {
		if bytes.Contains(b, []byte(secretValue)) {
			t.Fatalf("an answer holds the env value: %s", b)
		}
	}
	if strings.Contains(w.logs.String(), secretValue) || strings.Contains(w.logs.String(), w.nas) {
		t.Fatal("the log holds the env value or a token")
	}
	if dump := dumpDatabase(t, w.pool); strings.Contains(dump, secretValue) || strings.Contains(dump, w.nas) {
		t.Fatal("a table holds the env value or a token in the clear")
	}
}

func keys(m map[int]bool) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}

// dumpDatabase is every row of every table of the public schema as text.
func dumpDatabase(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	ctx := context.Background()
	rows, err := pool.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = 'public'`)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, n)
	}
	rows.Close()
	if !slices.Contains(tables, "runs") || !slices.Contains(tables, "run_env") {
		t.Fatalf("tables %v", tables)
	}
	var b strings.Builder
	for _, tb := range tables {
		var s *string
		if err := pool.QueryRow(ctx, `SELECT string_agg(x::text, E'\n') FROM `+tb+` x`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		if s != nil {
			b.WriteString(*s)
		}
	}
	return b.String()
}

// TestConfigRefuses: a configuration that cannot serve is an error.
func TestConfigRefuses(t *testing.T) {
	key := testKey(t)
	good := api.Token{Name: "NAS", Secret: strings.Repeat("ab", 20)}
	for name, cfg := range map[string]api.Config{
		"no tokens":   {Runs: &orchestrator.Orchestrator{}, Store: api.StoreReader(nil), Digest: key},
		"no digest":   {Runs: &orchestrator.Orchestrator{}, Store: api.StoreReader(nil), Tokens: []api.Token{good}},
		"short token": {Runs: &orchestrator.Orchestrator{}, Store: api.StoreReader(nil), Digest: key, Tokens: []api.Token{{Name: "NAS", Secret: "short"}}},
		"bad name":    {Runs: &orchestrator.Orchestrator{}, Store: api.StoreReader(nil), Digest: key, Tokens: []api.Token{{Name: "N-S", Secret: good.Secret}}},
		"twice":       {Runs: &orchestrator.Orchestrator{}, Store: api.StoreReader(nil), Digest: key, Tokens: []api.Token{good, {Name: "nas", Secret: good.Secret + "x"}}},
		"bad cause":   {Runs: &orchestrator.Orchestrator{}, Store: api.StoreReader(nil), Digest: key, Tokens: []api.Token{{Name: "NAS", Secret: good.Secret, Causes: []policy.Cause{"nope"}}}},
	} {
		if _, err := api.New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func testKey(t *testing.T) *seal.Key {
	raw := make([]byte, seal.KeyBytes)
	_, _ = rand.Read(raw)
	k, err := seal.NewKey("k", raw)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
