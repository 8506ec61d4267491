package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

// answerTransport answers every request in memory with one status and body:
// the fuzzer drives the decoding of a dashboard's answers, not the network
// (client_test.go covers that over loopback).
type answerTransport struct {
	status int
	body   []byte
	t      *testing.T
}

func (a answerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodGet && r.Header.Get("Authorization") != "" {
		a.t.Errorf("GET %s carries credentials: /api/status is public", r.URL.Path)
	}
	return &http.Response{StatusCode: a.status, Status: http.StatusText(a.status), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(bytes.NewReader(a.body)),
		ContentLength: int64(len(a.body)), Request: r}, nil
}

// folded returns the values of the object's keys that encoding/json would
// match to field (it matches names case-insensitively, like strings.EqualFold).
func folded(obj map[string]any, field string) []any {
	var out []any
	for k, v := range obj {
		if strings.EqualFold(k, field) {
			out = append(out, v)
		}
	}
	return out
}

func hasValue(obj map[string]any, field string, ok func(any) bool) bool {
	for _, v := range folded(obj, field) {
		if ok(v) {
			return true
		}
	}
	return false
}

// FuzzAnswers feeds arbitrary answers (status and body) to Status, Begin and
// Cancel. Nothing panics; every rejection is one of the package's typed
// errors, on one line, without the drain key or the agent's secret when the
// answer repeats them; and an answer is accepted only when the fields a
// decision rests on are really there — a missing or null gateway_running,
// active_agents, gateway_state, draining or was_draining never reads as a
// zero value that would let a busy agent be recreated.
//
// Redaction holds for a secret or key the answer repeats anywhere, even split
// by control characters (cleaned before redaction), and for every call,
// status included (the secret is derived for every call).
func FuzzAnswers(f *testing.F) {
	secret := testSecret(testTarget.App)
	for _, s := range []struct {
		status int
		body   string
	}{
		{200, `{"gateway_running": true, "gateway_state": "draining", "active_agents": 0, "version": "0.9.1", "restart_drain_timeout": 0}`},
		{200, `{"gateway_running": true, "gateway_state": "running", "active_agents": 2, "gateway_busy": true}`},
		{200, `{"gateway_running": false, "gateway_state": null}`},
		{200, `{"gateway_running": true, "gateway_state": "draining"}`},
		{200, `{"gateway_running": true, "gateway_state": "draining", "active_agents": -1}`},
		{200, `{"gateway_running": true, "GATEWAY_STATE": "draining", "Active_Agents": 0}`},
		{200, `{"gateway_running": true, "active_agents": 1e999}`},
		{200, `{"ok": true, "action": "drain", "requested_at": "2026-03-01T10:00:00.123456+00:00", "draining": true, "suppress_notification": true}`},
		{200, `{"ok": true, "action": "drain", "requested_at": "2026-03-01T10:00:00", "draining": true}`},
		{200, `{"ok": false, "draining": true}`},
		{200, `{"ok": true, "action": "cancel", "was_draining": false}`},
		{200, `null`},
		{200, `[{"gateway_running": false}]`},
		{200, "{\"gateway_running\": tru\n"},
		{200, ``},
		{401, `{"detail": "Unauthorized: bearer ` + secret + ` not accepted"}`},
		{401, `{"detail": {"msg": "nested\nlines", "key": "` + string(testKey) + `"}}`},
		{400, `{"detail": "Unknown drain action 'x'"}`},
		{405, "Method Not Allowed"},
		{500, "Internal Server Error\nTraceback (most recent call last):\n  File \"x.py\""},
		{503, `{"detail": "starting"}`},
		{302, ``},
	} {
		f.Add(s.status, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		if status < 0 {
			status = -status
		}
		status = 200 + status%400 // 200..599: what a dashboard or a proxy may answer
		c, err := New(Config{URLTemplate: "http://{machine_id}.vm.{app}.internal:9119", DrainKey: testKey, RetryMax: -1,
			Transport: answerTransport{status: status, body: body, t: t}})
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		var obj map[string]any
		isObject := json.Unmarshal(body, &obj) == nil && obj != nil
		check := func(op string, err error) bool {
			if err == nil {
				if status < 200 || status > 299 {
					t.Fatalf("%s accepted an HTTP %d answer", op, status)
				}
				if !isObject {
					t.Fatalf("%s accepted a body that is not a JSON object: %q", op, body)
				}
				return true
			}
			msg := err.Error()
			if strings.ContainsAny(msg, "\r\n") {
				t.Fatalf("%s error is not one line: %q", op, msg)
			}
			if strings.Contains(msg, string(testKey)) || strings.Contains(msg, secret) {
				t.Fatalf("%s error holds the drain key or the agent's secret: %q", op, msg)
			}
			var he *HTTPError
			var de *DecodeError
			var ce *CallError
			var te *TargetError
			if !errors.As(err, &he) && !errors.As(err, &de) && !errors.As(err, &ce) && !errors.As(err, &te) {
				t.Fatalf("%s error %T is not one of the package's types: %v", op, err, err)
			}
			if (status < 200 || status > 299) && he == nil {
				t.Fatalf("%s: HTTP %d gave %T, want *HTTPError", op, status, err)
			}
			return false
		}
		isTrue := func(v any) bool { return v == true }
		isFalse := func(v any) bool { return v == false }
		isBool := func(v any) bool { _, ok := v.(bool); return ok }

		if st, err := c.Status(ctx, testTarget); check("status", err) {
			if st.ActiveAgents < 0 {
				t.Fatalf("status accepted active_agents %d", st.ActiveAgents)
			}
			if !hasValue(obj, "gateway_running", map[bool]func(any) bool{true: isTrue, false: isFalse}[st.Running]) {
				t.Fatalf("status read gateway_running=%v from %q", st.Running, body)
			}
			if st.Running && !hasValue(obj, "active_agents", func(v any) bool { _, ok := v.(float64); return ok }) {
				t.Fatalf("status of a running gateway read active_agents=%d without the field: %q", st.ActiveAgents, body)
			}
			if st.Quiescent() && st.Running && !hasValue(obj, "gateway_state", func(v any) bool { return v == StateDraining }) {
				t.Fatalf("quiescent without gateway_state draining: %q", body)
			}
		}
		if e, err := c.Begin(ctx, testTarget, true); check("begin", err) {
			if !e.Draining || !hasValue(obj, "draining", isTrue) {
				t.Fatalf("begin accepted without draining true: %+v from %q", e, body)
			}
			if e.SuppressEchoed && !hasValue(obj, "suppress_notification", isBool) {
				t.Fatalf("begin saw an echoed flag that is not there: %+v from %q", e, body)
			}
			if hasValue(obj, "ok", isFalse) && len(folded(obj, "ok")) == 1 {
				t.Fatalf(`begin accepted "ok": false: %q`, body)
			}
		}
		if was, err := c.Cancel(ctx, testTarget); check("cancel", err) {
			if !hasValue(obj, "was_draining", map[bool]func(any) bool{true: isTrue, false: isFalse}[was]) {
				t.Fatalf("cancel read was_draining=%v from %q", was, body)
			}
		}
	})
}
