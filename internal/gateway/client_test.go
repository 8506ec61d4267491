package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/callrec"
	"github.com/hermes-cloud/migrator/internal/testkit/logbuf"
)

func TestBeginSendsContractRequest(t *testing.T) {
	for _, quiet := range []bool{true, false} {
		t.Run(fmt.Sprintf("quiet=%v", quiet), func(t *testing.T) {
			srv := newServer(t, func(w http.ResponseWriter, r *http.Request, _ int) {
				reply(w, 200, fmt.Sprintf(`{"ok":true,"action":"drain","requested_at":"2026-07-01T12:02:05.123456+00:00","draining":true,"suppress_notification":%v,"principal_hint":"ignored"}`, quiet))
			})
			c, _ := newClient(t, prefixTemplate(srv), nil)
			echo, err := c.Begin(context.Background(), testTarget, quiet)
			if err != nil {
				t.Fatal(err)
			}
			reqs := srv.requests()
			if len(reqs) != 1 {
				t.Fatalf("%d requests, want 1", len(reqs))
			}
			r := reqs[0]
			if r.Method != http.MethodPost || r.Path != "/agents/hermes-a/m1/api/gateway/drain" {
				t.Fatalf("request %s %s", r.Method, r.Path)
			}
			if got := r.Header.Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type = %q", got)
			}
			if got, want := r.Header.Get("Authorization"), "Bearer "+testSecret("hermes-a"); got != want {
				t.Errorf("Authorization header is not the derived bearer")
			}
			// Decoded generically so a string "false" or a non-object would show.
			var body any
			if err := json.Unmarshal(r.Body, &body); err != nil {
				t.Fatalf("body is not JSON: %v", err)
			}
			want := map[string]any{"action": "drain", "suppress_notification": quiet}
			if !reflect.DeepEqual(body, want) {
				t.Fatalf("body = %#v (%s), want %#v", body, r.Body, want)
			}
			wantAt := time.Date(2026, 7, 1, 12, 2, 5, 123456000, time.UTC)
			if !echo.Draining || echo.SuppressNotification != quiet || !echo.SuppressEchoed || echo.RawAction != "drain" || !echo.RequestedAt.Equal(wantAt) {
				t.Fatalf("echo = %+v", echo)
			}
			if !echo.Matches(quiet) || echo.Matches(!quiet) {
				t.Fatalf("Matches wrong for %+v", echo)
			}
		})
	}
}

func TestBeginAnswers(t *testing.T) {
	tests := []struct {
		name      string
		body      string
		wantErr   bool
		wantEcho  Echo
		quietSent bool
		matches   bool
	}{
		{name: "older gateway without the flag", body: `{"ok":true,"action":"drain","requested_at":"2026-07-01T12:02:05","draining":true}`,
			quietSent: true, wantEcho: Echo{Draining: true, RawAction: "drain", RequestedAt: time.Date(2026, 7, 1, 12, 2, 5, 0, time.UTC)}, matches: false},
		{name: "unparseable requested_at is informational", body: `{"ok":true,"draining":true,"suppress_notification":false,"requested_at":"soon"}`,
			wantEcho: Echo{Draining: true, SuppressEchoed: true}, matches: true},
		{name: "draining false", body: `{"ok":true,"draining":false}`, wantErr: true},
		{name: "draining missing", body: `{"ok":true}`, wantErr: true},
		{name: "ok false", body: `{"ok":false,"draining":true}`, wantErr: true},
		{name: "malformed", body: `{"ok":true,"draining":tru`, wantErr: true},
		{name: "html from a proxy", body: `<html>bad gateway</html>`, wantErr: true},
		{name: "array", body: `[]`, wantErr: true},
		{name: "null", body: `null`, wantErr: true},
		{name: "empty", body: ``, wantErr: true},
		{name: "draining as string", body: `{"draining":"true"}`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, func(w http.ResponseWriter, _ *http.Request, _ int) { reply(w, 200, tt.body) })
			c, _ := newClient(t, prefixTemplate(srv), nil)
			echo, err := c.Begin(context.Background(), testTarget, tt.quietSent)
			if tt.wantErr {
				var de *DecodeError
				if !errors.As(err, &de) {
					t.Fatalf("err = %v, want *DecodeError", err)
				}
				if IsPermanent(err) {
					t.Error("a DecodeError must be transient")
				}
				if !strings.Contains(err.Error(), "gateway.begin hermes-a/m1") {
					t.Errorf("error does not name op and target: %v", err)
				}
				if n := len(srv.requests()); n != 1 {
					t.Errorf("%d requests: a 200 is not retried", n)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if echo != tt.wantEcho {
				t.Fatalf("echo = %+v, want %+v", echo, tt.wantEcho)
			}
			if echo.Matches(tt.quietSent) != tt.matches {
				t.Fatalf("Matches(%v) = %v", tt.quietSent, !tt.matches)
			}
		})
	}
}

func TestCancel(t *testing.T) {
	tests := []struct {
		body    string
		want    bool
		wantErr bool
	}{
		{body: `{"ok":true,"action":"cancel","was_draining":true}`, want: true},
		{body: `{"ok":true,"action":"cancel","was_draining":false,"extra":{"a":[1,2]}}`, want: false},
		{body: `{"ok":true,"action":"cancel"}`, wantErr: true},
		{body: `not json`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.body, func(t *testing.T) {
			srv := newServer(t, func(w http.ResponseWriter, _ *http.Request, _ int) { reply(w, 200, tt.body) })
			c, _ := newClient(t, prefixTemplate(srv), nil)
			got, err := c.Cancel(context.Background(), testTarget)
			if tt.wantErr {
				var de *DecodeError
				if !errors.As(err, &de) {
					t.Fatalf("err = %v, want *DecodeError", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Cancel = %v, %v; want %v", got, err, tt.want)
			}
			r := srv.requests()[0]
			var body any
			if err := json.Unmarshal(r.Body, &body); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(body, map[string]any{"action": "cancel"}) {
				t.Fatalf("body = %s", r.Body)
			}
			if r.Method != http.MethodPost || r.Path != "/agents/hermes-a/m1/api/gateway/drain" ||
				r.Header.Get("Content-Type") != "application/json" || r.Header.Get("Authorization") != "Bearer "+testSecret("hermes-a") {
				t.Fatalf("request %s %s with wrong headers", r.Method, r.Path)
			}
		})
	}
}

func TestStatus(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    Status
		wantErr bool
	}{
		{name: "full, unknown fields ignored",
			body: `{"version":"0.21.4","release_date":"2026-09-20","gateway_running":true,"gateway_state":"draining","gateway_busy":false,"gateway_drainable":false,"active_agents":2,"active_sessions":3,"restart_drain_timeout":30,"components":{"gateway":{"status":"ok"}},"gateway_platforms":{}}`,
			want: Status{Running: true, State: "draining", ActiveAgents: 2, Version: "0.21.4", RestartDrainTimeout: 30, ActiveSessions: ptr(3)}},
		{name: "active_sessions not a count (left out)",
			body: `{"gateway_running":true,"gateway_state":"running","active_agents":0,"active_sessions":-1}`,
			want: Status{Running: true, State: "running"}},
		{name: "state null", body: `{"gateway_running":true,"gateway_state":null,"active_agents":0,"version":"0.20.0"}`,
			want: Status{Running: true, Version: "0.20.0"}},
		{name: "fractional timeout", body: `{"gateway_running":true,"gateway_state":"running","active_agents":1,"restart_drain_timeout":2.5}`,
			want: Status{Running: true, State: "running", ActiveAgents: 1, RestartDrainTimeout: 2.5}},
		{name: "stopped without agents", body: `{"gateway_running":false,"gateway_state":"stopped","active_agents":null,"version":null}`,
			want: Status{State: "stopped"}},
		// hermes-agent's /api/status on a gated bind (hermes_cli status
		// routes): platforms as an object, the rollup, the Nous session.
		{name: "real shape, degraded",
			body: `{"version":"0.21.5","release_date":"2026.9.24","gateway_running":true,"gateway_state":"degraded",` +
				`"gateway_platforms":{"telegram":{"state":"fatal","error_code":"telegram_token_lock","error_message":"another poller\nholds the token","needs_attention":false,"retrying_since":null,"updated_at":"2026-09-24T10:00:00Z"},` +
				`"discord":{"state":"connected","error_code":null,"error_message":null},"slack":{"state":"retrying","error_code":"network","needs_attention":true,"retrying_since":"2026-09-24T09:00:00Z"},` +
				`"worker:matrix":{"state":"some_future_state"},"odd":"not an object","typed":{"state":7,"needs_attention":"yes"}},` +
				`"gateway_exit_reason":null,"active_agents":0,"components":{"platforms":{"status":"degraded","configured":3,"connected":1}},` +
				`"overall":"degraded","nous_session_valid":"terminal","memory":{"pressure":"ok"}}`,
			want: Status{Running: true, State: "degraded", Version: "0.21.5", Overall: "degraded", NousSession: "terminal",
				Platforms: map[string]Platform{
					"telegram":      {State: "fatal", ErrorCode: "telegram_token_lock", ErrorMessage: "another poller holds the token"},
					"discord":       {State: "connected"},
					"slack":         {State: "retrying", ErrorCode: "network", NeedsAttention: true, RetryingSince: "2026-09-24T09:00:00Z"},
					"worker:matrix": {State: "some_future_state"},
					"typed":         {},
				}}},
		{name: "stopped with an exit reason, platforms a list (not the shape: ignored)",
			body: `{"gateway_running":false,"gateway_state":"startup_failed","gateway_exit_reason":"telegram conflict","gateway_platforms":["telegram"],"nous_session_valid":true,"overall":null}`,
			want: Status{State: "startup_failed", ExitReason: "telegram conflict"}},
		{name: "no gateway_running", body: `{"gateway_state":"draining","active_agents":0}`, wantErr: true},
		{name: "running without active_agents", body: `{"gateway_running":true,"gateway_state":"draining"}`, wantErr: true},
		{name: "negative active_agents", body: `{"gateway_running":true,"gateway_state":"draining","active_agents":-1}`, wantErr: true},
		{name: "malformed", body: `{"gateway_running":true,`, wantErr: true},
		{name: "wrong type", body: `{"gateway_running":"yes","active_agents":0}`, wantErr: true},
		{name: "array", body: `[{"gateway_running":false}]`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, func(w http.ResponseWriter, _ *http.Request, _ int) { reply(w, 200, tt.body) })
			c, _ := newClient(t, prefixTemplate(srv), nil)
			got, err := c.Status(context.Background(), testTarget)
			r := srv.requests()[0]
			if r.Method != http.MethodGet || r.Path != "/agents/hermes-a/m1/api/status" {
				t.Fatalf("request %s %s", r.Method, r.Path)
			}
			if r.Header.Get("Authorization") != "" || len(r.Body) != 0 {
				t.Fatal("status request carries credentials or a body")
			}
			if tt.wantErr {
				var de *DecodeError
				if !errors.As(err, &de) {
					t.Fatalf("err = %v, want *DecodeError", err)
				}
				if de.Op != OpStatus || de.Target != "hermes-a/m1" || de.StatusCode != 200 {
					t.Fatalf("DecodeError = %+v", de)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Status = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestRetriesServerErrorsThenSucceeds(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, _ *http.Request, n int) {
		w.Header().Set("X-Request-Id", fmt.Sprintf("req-%d", n))
		if n < 2 {
			reply(w, 500+n*2, `{"detail":"marker write failed"}`) // 500, 502
			return
		}
		reply(w, 200, `{"ok":true,"action":"drain","draining":true,"suppress_notification":true}`)
	})
	c, _ := newClient(t, prefixTemplate(srv), nil)
	log := &callrec.Log{}
	ctx := callrec.WithLog(context.Background(), log)
	if _, err := c.Begin(ctx, testTarget, true); err != nil {
		t.Fatal(err)
	}
	reqs := srv.requests()
	if len(reqs) != 3 {
		t.Fatalf("%d requests, want 3", len(reqs))
	}
	for i, r := range reqs {
		var body map[string]any
		if err := json.Unmarshal(r.Body, &body); err != nil || body["suppress_notification"] != true {
			t.Fatalf("attempt %d body %s: the retry must resend the whole body", i, r.Body)
		}
	}
	calls := log.Take()
	if len(calls) != 3 {
		t.Fatalf("%d calls recorded, want 3", len(calls))
	}
	for i, want := range []int{500, 502, 200} {
		c := calls[i]
		if c.Kind != OpBegin || c.Target != "hermes-a/m1" || c.Method != "POST" || c.Status != want || c.RequestID != fmt.Sprintf("req-%d", i) {
			t.Errorf("call %d = %+v", i, c)
		}
	}
}

func TestTransportErrorIsRetried(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, _ *http.Request, n int) {
		if n == 0 {
			// Drop the connection without an answer.
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		reply(w, 200, `{"gateway_running":true,"gateway_state":"running","active_agents":0}`)
	})
	c, _ := newClient(t, prefixTemplate(srv), nil)
	log := &callrec.Log{}
	st, err := c.Status(callrec.WithLog(context.Background(), log), testTarget)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Serving() {
		t.Fatalf("status %+v", st)
	}
	calls := log.Take()
	if len(calls) != 2 || calls[0].Err == "" || calls[0].Status != 0 || calls[1].Status != 200 || calls[0].Kind != OpStatus {
		t.Fatalf("calls = %+v", calls)
	}
}

func TestPermanentStatusesAreTypedAndNotRetried(t *testing.T) {
	for _, code := range []int{400, 401, 403, 405} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			srv := newServer(t, func(w http.ResponseWriter, r *http.Request, _ int) {
				// A hostile or buggy server echoing the bearer must not get it
				// into our error.
				reply(w, code, fmt.Sprintf(`{"detail":"refused %s"}`, r.Header.Get("Authorization")))
			})
			c, logs := newClient(t, prefixTemplate(srv), nil)
			_, err := c.Begin(context.Background(), testTarget, true)
			var he *HTTPError
			if !errors.As(err, &he) {
				t.Fatalf("err = %v, want *HTTPError", err)
			}
			if he.StatusCode != code || he.Op != OpBegin || he.Target != "hermes-a/m1" || !he.Permanent() || !IsPermanent(err) {
				t.Fatalf("HTTPError = %+v", he)
			}
			if n := len(srv.requests()); n != 1 {
				t.Fatalf("%d requests, want 1 (permanent errors are not retried)", n)
			}
			msg := err.Error()
			if strings.Contains(msg, testSecret("hermes-a")) || strings.Contains(logs.String(), testSecret("hermes-a")) {
				t.Fatal("secret leaked")
			}
			if !strings.Contains(msg, "refused Bearer [redacted]") || strings.Contains(msg, "\n") {
				t.Fatalf("error = %q", msg)
			}
		})
	}
}

func TestTransientStatusesExhaustRetries(t *testing.T) {
	tests := []struct {
		code     int
		attempts int
	}{
		{500, 5}, {502, 5}, {503, 5}, {429, 5},
		{404, 1}, {409, 1}, {307, 1}, // not retryable, not permanent
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.code), func(t *testing.T) {
			other := newServer(t, func(w http.ResponseWriter, _ *http.Request, _ int) { reply(w, 200, `{}`) })
			srv := newServer(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
				if tt.code == 307 {
					w.Header().Set("Location", other.URL+"/steal")
				}
				reply(w, tt.code, `oops`)
			})
			c, _ := newClient(t, prefixTemplate(srv), nil)
			_, err := c.Cancel(context.Background(), testTarget)
			var he *HTTPError
			if !errors.As(err, &he) || he.StatusCode != tt.code {
				t.Fatalf("err = %v, want HTTPError %d", err, tt.code)
			}
			if IsPermanent(err) {
				t.Fatal("transient status classified permanent")
			}
			if n := len(srv.requests()); n != tt.attempts || he.Attempts != tt.attempts {
				t.Fatalf("%d requests, Attempts %d; want %d", n, he.Attempts, tt.attempts)
			}
			if len(other.requests()) != 0 {
				t.Fatal("redirect followed: the bearer could go elsewhere")
			}
			if he.Detail != "oops" {
				t.Fatalf("Detail = %q", he.Detail)
			}
		})
	}
}

func TestRetryAfter(t *testing.T) {
	t.Run("honoured", func(t *testing.T) {
		srv := newServer(t, func(w http.ResponseWriter, _ *http.Request, n int) {
			if n == 0 {
				w.Header().Set("Retry-After", "1")
				reply(w, 429, `{"detail":"slow down"}`)
				return
			}
			reply(w, 200, `{"ok":true,"was_draining":false}`)
		})
		c, _ := newClient(t, prefixTemplate(srv), nil)
		if _, err := c.Cancel(context.Background(), testTarget); err != nil {
			t.Fatal(err)
		}
		reqs := srv.requests()
		if len(reqs) != 2 {
			t.Fatalf("%d requests", len(reqs))
		}
		// The backoff alone would be ≤ 5 ms.
		if gap := reqs[1].At.Sub(reqs[0].At); gap < 900*time.Millisecond {
			t.Fatalf("retried after %s, Retry-After said 1s", gap)
		}
	})
	for _, tt := range []struct {
		name     string
		header   string
		deadline time.Duration
	}{
		{name: "longer than RetryAfterMax", header: "120"},
		{name: "longer than the context", header: "20", deadline: 5 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
				w.Header().Set("Retry-After", tt.header)
				reply(w, 429, `{}`)
			})
			c, _ := newClient(t, prefixTemplate(srv), nil)
			ctx := context.Background()
			if tt.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.deadline)
				defer cancel()
			}
			start := time.Now()
			_, err := c.Cancel(ctx, testTarget)
			var he *HTTPError
			if !errors.As(err, &he) || he.StatusCode != 429 || he.RetryAfter < 19*time.Second {
				t.Fatalf("err = %v", err)
			}
			if n := len(srv.requests()); n != 1 {
				t.Fatalf("%d requests, want 1: a wait past the limit is the caller's to schedule", n)
			}
			if time.Since(start) > time.Second {
				t.Fatal("waited although it could not retry in time")
			}
		})
	}
}

func TestContextBoundsRetries(t *testing.T) {
	t.Run("backoff cut by deadline", func(t *testing.T) {
		srv := newServer(t, func(w http.ResponseWriter, _ *http.Request, _ int) { reply(w, 503, `{}`) })
		c, _ := newClient(t, prefixTemplate(srv), func(cfg *Config) {
			cfg.RetryMax = 100
			cfg.RetryWaitMin = 100 * time.Millisecond
			cfg.RetryWaitMax = 10 * time.Second
		})
		ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := c.Status(ctx, testTarget)
		if el := time.Since(start); el > 2*time.Second {
			t.Fatalf("took %s past a 400ms deadline", el)
		}
		var ce *CallError
		if !errors.As(err, &ce) || !errors.Is(err, context.DeadlineExceeded) || IsPermanent(err) {
			t.Fatalf("err = %v", err)
		}
		if ce.Attempts < 2 || ce.LastStatus != 503 || !strings.Contains(err.Error(), "last: HTTP 503") {
			t.Fatalf("CallError = %+v (%v)", ce, err)
		}
	})
	t.Run("hanging agent cut by call timeout then deadline", func(t *testing.T) {
		release := make(chan struct{})
		srv := newServer(t, func(w http.ResponseWriter, r *http.Request, _ int) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		})
		defer close(release)
		c, _ := newClient(t, prefixTemplate(srv), func(cfg *Config) { cfg.CallTimeout = 50 * time.Millisecond; cfg.RetryMax = 100 })
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := c.Begin(ctx, testTarget, false)
		if el := time.Since(start); el > 2*time.Second {
			t.Fatalf("took %s", el)
		}
		var ce *CallError
		if !errors.As(err, &ce) || IsPermanent(err) {
			t.Fatalf("err = %v", err)
		}
		if n := len(srv.requests()); n < 2 {
			t.Fatalf("%d attempts: a timed-out attempt must be retried", n)
		}
	})
	t.Run("agent down", func(t *testing.T) {
		srv := newServer(t, func(http.ResponseWriter, *http.Request, int) {})
		tmpl := prefixTemplate(srv)
		srv.Close()
		c, _ := newClient(t, tmpl, nil)
		_, err := c.Status(context.Background(), testTarget)
		var ce *CallError
		if !errors.As(err, &ce) || ce.Attempts != 5 || IsPermanent(err) {
			t.Fatalf("err = %v", err)
		}
		if strings.Contains(err.Error(), "/agents/") {
			t.Fatalf("error carries the URL: %v", err)
		}
	})
}

// TestNoSecretInLogsErrorsOrCalls drives every path with a debug logger and
// checks the captured output, every error and every recorded call.
func TestNoSecretInLogsErrorsOrCalls(t *testing.T) {
	secret := testSecret("hermes-a")
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) {
		auth := r.Header.Get("Authorization")
		switch n % 5 {
		case 0:
			reply(w, 500, `{"detail":"`+auth+`"}`)
		case 1:
			reply(w, 200, `{"ok":true,"draining":true,"was_draining":true,"echo":"`+auth+`"}`)
		case 2:
			reply(w, 401, auth+" "+string(testKey))
		case 3:
			reply(w, 200, `{"broken":"`+auth)
		case 4:
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
		}
	})
	var observed []callrec.Call
	c, logs := newClient(t, prefixTemplate(srv), func(cfg *Config) {
		cfg.RetryMax = -1
		cfg.Observe = func(c callrec.Call) { observed = append(observed, c) }
	})
	log := &callrec.Log{}
	ctx := callrec.WithLog(context.Background(), log)
	var outputs []string
	for i := 0; i < 5; i++ {
		var err error
		if i%2 == 0 {
			_, err = c.Begin(ctx, testTarget, true)
		} else {
			_, err = c.Cancel(ctx, testTarget)
		}
		if err != nil {
			outputs = append(outputs, err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err))
		}
	}
	if len(outputs) != 4*3 {
		t.Fatalf("%d error outputs, want 12: every path but the success must fail", len(outputs))
	}
	outputs = append(outputs, logs.String(), fmt.Sprintf("%+v %#v", log.Take(), observed), fmt.Sprintf("%+v %#v %v", c, c, c))
	if !strings.Contains(logs.String(), "gateway call") || len(observed) != 5 {
		t.Fatalf("nothing was logged or observed; the test would prove nothing")
	}
	for _, s := range outputs {
		if strings.Contains(s, secret) || strings.Contains(s, string(testKey)) {
			t.Fatalf("secret or key leaked into: %s", s)
		}
	}
}

func TestTemplateExpansionOverHTTP(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
		reply(w, 200, `{"gateway_running":false}`)
	})
	tmpl := srv.URL + "/p/{app}/{machine_id}/{region}/{private_ip}/{instance_id}/"
	c, _ := newClient(t, tmpl, nil)
	tgt := Target{App: "hermes a", MachineID: "m/1", Region: "fra", PrivateIP: "fdaa:0:1::5", InstanceID: "01HX?"}
	if _, err := c.Status(context.Background(), tgt); err != nil {
		t.Fatal(err)
	}
	r := srv.requests()[0]
	if want := "/p/hermes%20a/m%2F1/fra/fdaa:0:1::5/01HX%3F/api/status"; r.EscapedPath != want {
		t.Fatalf("path = %s, want %s", r.EscapedPath, want)
	}
}

func TestBaseURL(t *testing.T) {
	tests := []struct {
		name, tmpl string
		target     Target
		want       string
		wantErr    string
	}{
		{name: "default", target: testTarget, want: "http://m1.vm.hermes-a.internal:9119"},
		{name: "prefix and trailing slash", tmpl: "https://proxy.example/agents/{app}/", target: testTarget, want: "https://proxy.example/agents/hermes-a"},
		{name: "every placeholder", tmpl: "http://[{private_ip}]:9119/{region}/{instance_id}/{machine_id}/{app}", target: testTarget,
			want: "http://[fdaa:0:1::5]:9119/fra/01HX/m1/hermes-a"},
		{name: "missing machine id", target: Target{App: "a"}, wantErr: "no machine_id"},
		{name: "bare IPv4", tmpl: "http://{private_ip}:9119", target: Target{App: "a", PrivateIP: "172.19.0.2"}, want: "http://172.19.0.2:9119"},
		{name: "missing app", tmpl: "http://x/{machine_id}", target: Target{MachineID: "m"}, wantErr: "no app"},
		{name: "unused field may be empty", tmpl: "http://x/{app}", target: Target{App: "a"}, want: "http://x/a"},
		{name: "credentials smuggled into host", tmpl: "http://{app}.internal", target: Target{App: "evil@attacker"}, wantErr: "credentials"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newClient(t, tt.tmpl, nil)
			got, err := c.BaseURL(tt.target)
			if tt.wantErr != "" {
				var te *TargetError
				if !errors.As(err, &te) || !IsPermanent(err) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want permanent TargetError %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("BaseURL = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestTargetErrorBeforeAnyCall(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, _ *http.Request, _ int) { reply(w, 200, `{}`) })
	c, _ := newClient(t, prefixTemplate(srv), nil)
	_, err := c.Begin(context.Background(), Target{App: "a"}, true)
	var te *TargetError
	if !errors.As(err, &te) || te.Op != OpBegin || !IsPermanent(err) {
		t.Fatalf("err = %v", err)
	}
	if len(srv.requests()) != 0 {
		t.Fatal("a request was sent")
	}
}

func TestNewValidates(t *testing.T) {
	short := []byte("short-key-value-123")
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "ok", cfg: Config{DrainKey: testKey}},
		{name: "no key", cfg: Config{}, wantErr: "drain key is required"},
		{name: "short key", cfg: Config{DrainKey: short}, wantErr: "too short"},
		{name: "unknown placeholder", cfg: Config{DrainKey: testKey, URLTemplate: "http://{host}:9119"}, wantErr: "unknown placeholder {host}"},
		{name: "unclosed", cfg: Config{DrainKey: testKey, URLTemplate: "http://{app:9119"}, wantErr: "unclosed"},
		{name: "stray brace", cfg: Config{DrainKey: testKey, URLTemplate: "http://app}:9119"}, wantErr: "unmatched"},
		{name: "no scheme", cfg: Config{DrainKey: testKey, URLTemplate: "{app}.internal:9119"}, wantErr: "http or https"},
		{name: "query", cfg: Config{DrainKey: testKey, URLTemplate: "http://x/{app}?a=1"}, wantErr: "query"},
		{name: "credentials", cfg: Config{DrainKey: testKey, URLTemplate: "http://u:p@x/{app}"}, wantErr: "credentials"},
		{name: "waits", cfg: Config{DrainKey: testKey, RetryWaitMin: time.Second, RetryWaitMax: time.Millisecond}, wantErr: "exceeds"},
		{name: "negative timeout", cfg: Config{DrainKey: testKey, CallTimeout: -1}, wantErr: "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), string(short)) || strings.Contains(err.Error(), string(testKey)) {
				t.Fatal("error leaks the key")
			}
		})
	}
}

func TestConfigLogValueHidesKey(t *testing.T) {
	var buf logbuf.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("config", "cfg", Config{DrainKey: testKey})
	if strings.Contains(buf.String(), string(testKey)) || !strings.Contains(buf.String(), `"drain_key_set":true`) {
		t.Fatalf("logged %s", buf.String())
	}
}
