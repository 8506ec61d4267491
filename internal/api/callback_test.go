package api_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/hermes-cloud/migrator/internal/notify"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/store"
)

// receiver is NAS's end of the callback: a webhook receiver that checks
// each delivery's Standard Webhooks signature with that project's own
// library (not migrator's Verify) and keeps what verified, once per id.
type receiver struct {
	wh   *standardwebhooks.Webhook
	mu   sync.Mutex
	got  []notify.WebhookBody
	seen map[string]bool
	bad  int
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err := rc.wh.Verify(body, r.Header); err != nil {
		rc.mu.Lock()
		rc.bad++
		rc.mu.Unlock()
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	var b notify.WebhookBody
	if err := json.Unmarshal(body, &b); err != nil {
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	rc.mu.Lock()
	if !rc.seen[b.ID] {
		rc.seen[b.ID] = true
		rc.got = append(rc.got, b)
	}
	rc.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (rc *receiver) bodies() []notify.WebhookBody {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]notify.WebhookBody(nil), rc.got...)
}

// TestCompletionReachesTheCallback: NAS's env edit, made through the API,
// runs to its end on the simulated fleet (drained, recreated with the new
// env, verified), and its run.succeeded reaches a webhook sink with the
// filter NAS sets (requested_by api:NAS, the three ends), signed, with the
// run id and NAS's idempotency key; a run another caller asked for, which
// went as well, reaches it not at all.
func TestCompletionReachesTheCallback(t *testing.T) {
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	secret := "whsec_" + base64.StdEncoding.EncodeToString(raw)
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	rc := &receiver{wh: wh, seen: map[string]bool{}}
	hook := httptest.NewServer(rc)
	defer hook.Close()
	w := newWorld(t, worldOpts{workers: true, river: func(o *orchestrator.RiverOptions, st *store.Store) {
		n, err := notify.New(notify.Config{SweepEvery: 100 * time.Millisecond, RetryMin: 200 * time.Millisecond, RetryMax: time.Second,
			Sinks: []notify.SinkConfig{{Name: "nas", Kind: notify.Webhook, URL: hook.URL, Secret: secret,
				Events: []string{"run.succeeded", "run.failed", "run.cancelled"}, RequestedBy: []string{"api:NAS"}}}}, st)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Register(context.Background()); err != nil {
			t.Fatal(err)
		}
		o.Extensions = append(o.Extensions, n)
	}})
	mine := w.do(call{method: http.MethodPost, path: "/api/v1/runs", token: w.nas, validRequest: true,
		header: map[string]string{"Idempotency-Key": "dashboard-edit-77"},
		body:   map[string]any{"cause": "env-edit", "apps": []string{app(1)}, "env": map[string]string{"TELEGRAM_BOT_TOKEN": secretValue}}})
	w.expect(mine, http.StatusCreated, "")
	theirs := w.do(call{method: http.MethodPost, path: "/api/v1/runs", token: w.ops, validRequest: true,
		body: map[string]any{"cause": "profile-change", "apps": []string{app(2)}, "restart": true}})
	w.expect(theirs, http.StatusCreated, "")

	deadline := time.Now().Add(90 * time.Second)
	for _, id := range []int64{mine.id(t), theirs.id(t)} {
		for {
			r, err := w.st.Q().GetRun(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			if store.RunTerminal(r.State) {
				if r.State != store.RunSucceeded {
					t.Fatalf("run %d ended %s: %s", id, r.State, r.StateReason)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("run %d still %s", id, r.State)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// The agent serves the new env.
	for _, m := range w.sim.Machines() {
		if m.App == app(1) && m.Env["TELEGRAM_BOT_TOKEN"] != secretValue {
			t.Fatalf("%s booted without the new env", m.App)
		}
	}
	// Polling sees the end too.
	got := w.expect(w.do(call{method: http.MethodGet, path: fmt.Sprintf("/api/v1/runs/%d", mine.id(t)), token: w.nas, validRequest: true}),
		http.StatusOK, "")
	if got["state"] != "succeeded" {
		t.Fatalf("GET says %v", got["state"])
	}
	ms := got["machines"].([]any)
	if m := ms[0].(map[string]any); m["outcome"] != "migrated" || m["drain"] == nil {
		t.Fatalf("machine %v: want migrated, drained", m)
	}

	var bodies []notify.WebhookBody
	for time.Now().Before(deadline) {
		if bodies = rc.bodies(); len(bodies) > 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second) // anything else due would arrive by now
	bodies = rc.bodies()
	if len(bodies) != 1 || rc.bad != 0 {
		t.Fatalf("the receiver got %d notifications (%d did not verify), want 1: %+v", len(bodies), rc.bad, bodies)
	}
	b := bodies[0]
	d := b.Details
	if b.Event != "run.succeeded" || d["run_id"] != float64(mine.id(t)) || d["idempotency_key"] != "dashboard-edit-77" ||
		d["requested_by"] != "api:NAS" || d["state"] != "succeeded" {
		t.Fatalf("callback %s %+v", b.Event, d)
	}
	if ch, _ := d["change"].(map[string]any); fmt.Sprint(ch["env_set"]) != "[TELEGRAM_BOT_TOKEN]" {
		t.Fatalf("callback change %v", d["change"])
	}
	js, _ := json.Marshal(bodies)
	if dump := dumpDatabase(t, w.pool); contains(js, secretValue) || contains([]byte(dump), secretValue) {
		t.Fatal("the env value is in a callback or a table")
	}
}

func contains(b []byte, s string) bool {
	return len(s) > 0 && string(b) != "" && indexOf(string(b), s) >= 0
}

func indexOf(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return -1
}
