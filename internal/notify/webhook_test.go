package notify_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/hermes-cloud/migrator/internal/notify"
	"github.com/hermes-cloud/migrator/store"
	"github.com/hermes-cloud/migrator/store/storetest"
)

// A receiver verifies the webhook with the Standard Webhooks project's own
// Go library (a published implementation of the spec, not ours): with the
// current secret, and, while keys rotate, with the previous one; a wrong
// secret or a changed body fails. The deprecated X-Migrator-* headers are
// still sent and still check.
func TestWebhookVerifiesWithTheStandardWebhooksLibrary(t *testing.T) {
	ctx := context.Background()
	_, pool := storetest.NewDB(t)
	st := store.New(pool)
	rc := newReceiver(t)
	hook := sinks(rc)[2]
	hook.PreviousSecret = oldHookSecret
	n := newNotifier(t, st, notify.Config{Sinks: []notify.SinkConfig{hook}})
	r := newRun(t, st)
	if _, err := st.Q().SetRunState(ctx, r.ID, []store.RunState{store.RunRunning}, store.RunFailed, "2 machine(s) failed", "migrator"); err != nil {
		t.Fatal(err)
	}
	deliverDue(t, st, n)
	got := rc.requests("/hook")
	if len(got) != 1 {
		t.Fatalf("%d webhook requests", len(got))
	}
	req := got[0]
	if sigs := strings.Fields(req.Header.Get("webhook-signature")); len(sigs) != 2 || !strings.HasPrefix(sigs[0], "v1,") ||
		!strings.HasPrefix(sigs[1], "v1,") {
		t.Fatalf("webhook-signature = %q, want two v1 signatures", req.Header.Get("webhook-signature"))
	}
	for _, secret := range []string{hookSecret, oldHookSecret} {
		wh, err := standardwebhooks.NewWebhook(secret)
		if err != nil {
			t.Fatal(err)
		}
		if err := wh.Verify(req.Body, req.Header); err != nil {
			t.Errorf("the library does not verify the request: %v", err)
		}
		tampered := append([]byte(nil), req.Body...)
		tampered[len(tampered)-2] ^= 1
		if err := wh.Verify(tampered, req.Header); err == nil {
			t.Error("the library verified a changed body")
		}
	}
	other, err := standardwebhooks.NewWebhook("whsec_" + "c29tZWJvZHktZWxzZXMta2V5LTAxMjM0NTY3ODkwMTI=")
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Verify(req.Body, req.Header); err == nil {
		t.Error("the library verified the request with another secret")
	}
	// Only the current secret signs once the rotation is over.
	now := time.Now()
	h := http.Header{}
	h.Set("webhook-id", "msg_1")
	h.Set("webhook-timestamp", itoa(now.Unix()))
	key, err := notify.ParseWebhookSecret(hookSecret)
	if err != nil {
		t.Fatal(err)
	}
	h.Set("webhook-signature", notify.Sign("msg_1", now.Unix(), []byte(`{"a":1}`), key))
	wh, _ := standardwebhooks.NewWebhook(hookSecret)
	if err := wh.Verify([]byte(`{"a":1}`), h); err != nil {
		t.Errorf("one signature: %v", err)
	}
	// The deprecated headers, for receivers not yet moved.
	ts := req.Header.Get("X-Migrator-Timestamp")
	if ts != req.Header.Get("webhook-timestamp") ||
		req.Header.Get("X-Migrator-Signature") != notify.SignLegacy([]byte(hookSecret), ts, req.Body) {
		t.Errorf("X-Migrator-Timestamp %q, X-Migrator-Signature %q: not the legacy signature", ts, req.Header.Get("X-Migrator-Signature"))
	}
}
