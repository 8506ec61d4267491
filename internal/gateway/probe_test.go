package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestProbe: each answer of the drain route maps to its category; the
// probe sends the derived bearer and an unknown action (never drain or
// cancel), and no secret reaches the error or the log.
func TestProbe(t *testing.T) {
	for _, tc := range []struct {
		status int
		body   string
		want   Readiness
		tries  int
	}{
		{400, `{"detail":"Unknown drain action 'migrator-readiness-probe'; expected 'drain' or 'cancel'"}`, Ready, 1},
		// The dashboard's Host check (hermes_cli/web_server.py
		// host_header_middleware) answers after the bearer and before
		// routing: not a drain route answering.
		{400, `{"detail":"Invalid Host header. Dashboard requests must use the hostname the server was bound to."}`, HostRejected, 1},
		{400, `{"detail":"Invalid Host header. Dashboard requests must use the bound hostname or the configured public hostname."}`, HostRejected, 1},
		{400, `{"detail":"something else"}`, Unexpected, 1},
		{401, `{"detail":"Unauthorized ` + testSecret("hermes-a") + `"}`, NoSecret, 1},
		{404, `{"detail":"Not Found"}`, NoDrainRoute, 1},
		{403, `{"detail":"scope"}`, Forbidden, 1},
		{503, `{"detail":"auth provider unreachable"}`, ServerError, 3},
		{200, `{"ok":true,"action":"drain","draining":true}`, Unexpected, 1},
		{405, `{"detail":"Method Not Allowed"}`, Unexpected, 1},
	} {
		t.Run(http.StatusText(tc.status), func(t *testing.T) {
			s := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) { reply(w, tc.status, tc.body) })
			c, logs := newClient(t, prefixTemplate(s), func(c *Config) { c.RetryMax = 2 })
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			res := c.Probe(ctx, testTarget)
			if res.Readiness != tc.want || res.StatusCode != tc.status {
				t.Fatalf("probe = %+v, want %s with %d", res, tc.want, tc.status)
			}
			if (res.Err == nil) != (tc.want == Ready) {
				t.Errorf("err = %v", res.Err)
			}
			reqs := s.requests()
			if len(reqs) != tc.tries {
				t.Errorf("%d requests, want %d", len(reqs), tc.tries)
			}
			r := reqs[0]
			var body map[string]any
			if err := json.Unmarshal(r.Body, &body); err != nil || len(body) != 1 || body["action"] != ProbeAction {
				t.Errorf("body %s", r.Body)
			}
			if a := strings.ToLower(strings.TrimSpace(ProbeAction)); a == "drain" || a == "cancel" || a == "" {
				t.Errorf("probe action %q is one the gateway acts on", ProbeAction)
			}
			if r.Method != http.MethodPost || r.Path != "/agents/hermes-a/m1/api/gateway/drain" ||
				r.Header.Get("Authorization") != "Bearer "+testSecret("hermes-a") {
				t.Errorf("request %s %s auth ok=%t", r.Method, r.Path, r.Header.Get("Authorization") == "Bearer "+testSecret("hermes-a"))
			}
			for _, leak := range []string{testSecret("hermes-a"), string(testKey)} {
				if res.Err != nil && strings.Contains(res.Err.Error(), leak) || strings.Contains(logs.String(), leak) {
					t.Error("secret leaked")
				}
			}
		})
	}
}

func TestProbeUnreachable(t *testing.T) {
	s := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) {})
	url := s.URL
	s.Close()
	c, _ := newClient(t, url+"/{app}/{machine_id}", func(c *Config) { c.RetryMax = 1 })
	res := c.Probe(context.Background(), testTarget)
	if res.Readiness != Unreachable || res.StatusCode != 0 || res.Err == nil {
		t.Fatalf("probe = %+v, want unreachable", res)
	}
}

func TestUndrainable(t *testing.T) {
	for code, want := range map[int]bool{401: true, 404: true, 403: false, 500: false, 503: false, 400: false} {
		got, ok := Undrainable(&HTTPError{Op: OpBegin, StatusCode: code})
		if ok != want || ok && got != code {
			t.Errorf("Undrainable(HTTP %d) = %d, %t", code, got, ok)
		}
	}
	if _, ok := Undrainable(&CallError{Op: OpBegin, Err: context.DeadlineExceeded}); ok {
		t.Error("a transport error is undrainable")
	}
	if _, ok := Undrainable(nil); ok {
		t.Error("nil is undrainable")
	}
}
