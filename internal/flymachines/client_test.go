package flymachines

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/superfly/fly-go/flaps"

	"github.com/hermes-cloud/migrator/internal/callrec"
)

func TestListAndGet(t *testing.T) {
	t.Parallel()
	f := newFake(t, testToken)
	f.apps["acme"] = []string{"agent-a", "agent-b"}
	f.addMachine("agent-a", "m1", "started", "img:1")
	f.addMachine("agent-a", "m2", "stopped", "img:1")
	c, _ := newTestClient(t, f, testToken, nil)
	ctx := context.Background()

	apps, err := c.ListApps(ctx, "acme")
	if err != nil || !slices.Equal(apps, []App{{"agent-a", "acme"}, {"agent-b", "acme"}}) {
		t.Fatalf("ListApps = %+v, %v", apps, err)
	}
	ms, err := c.ListMachines(ctx, "agent-a")
	if err != nil || len(ms) != 2 {
		t.Fatalf("ListMachines = %+v, %v", ms, err)
	}
	m, err := c.GetMachine(ctx, "agent-a", "m1")
	if err != nil {
		t.Fatal(err)
	}
	if m.App != "agent-a" || m.ID != "m1" || m.Name != "name-m1" || m.Region != "ams" || m.State != "started" ||
		m.InstanceID != "inst-m1-1" || m.PrivateIP != "fdaa::1" || m.Image != "img:1" ||
		m.Labels["hermes/tenant"] != "t-m1" || m.ChecksConfigured != 0 || m.UpdatedAt.IsZero() {
		t.Errorf("machine = %+v", m)
	}
}

func TestErrorsClassified(t *testing.T) {
	t.Parallel()
	f := newFake(t, testToken)
	c, _ := newTestClient(t, f, testToken, nil)
	_, err := c.GetMachine(context.Background(), "app1", "missing")
	var ae *APIError
	if !errors.As(err, &ae) || ae.Op != "fly.get" || ae.App != "app1" || ae.MachineID != "missing" ||
		ae.Status != 404 || !strings.HasPrefix(ae.RequestID, "req-") || ae.Msg != "machine not found" {
		t.Fatalf("err = %#v", err)
	}
	if !IsNotFound(err) || !errors.Is(err, flaps.ErrFlapsNotFound) || IsTransient(err) {
		t.Errorf("404: IsNotFound=%v Is(ErrFlapsNotFound)=%v IsTransient=%v", IsNotFound(err),
			errors.Is(err, flaps.ErrFlapsNotFound), IsTransient(err))
	}
	if want := "fly.get app1/missing: HTTP 404: machine not found (fly-request-id "; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("message %q", err.Error())
	}
	if _, err := c.GetMachine(context.Background(), "app1", "../x"); err == nil || IsTransient(err) {
		t.Errorf("bad machine id: %v, want a permanent input error", err)
	}
}

func TestNetworkErrorsAreTransient(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens: connection refused
	c, err := New(context.Background(), Config{Token: testToken, BaseURL: "http://" + addr, CallTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.GetMachine(context.Background(), "app1", "m1")
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 0 || !IsTransient(err) {
		t.Fatalf("err = %#v, want transient APIError without status", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.GetMachine(ctx, "app1", "m1"); IsTransient(err) {
		t.Errorf("canceled call: %v, must not be transient", err)
	}
}

func TestAPIErrorTransient(t *testing.T) {
	t.Parallel()
	for status, want := range map[int]bool{400: false, 401: false, 403: false, 404: false, 409: false, 412: false,
		422: false, 408: true, 429: true, 500: true, 502: true, 503: true, 504: true} {
		if got := (&APIError{Status: status}).Transient(); got != want {
			t.Errorf("status %d transient = %v, want %v", status, got, want)
		}
		if got := IsTransient(fmt.Errorf("wrapped: %w", &APIError{Status: status})); got != want {
			t.Errorf("wrapped status %d IsTransient = %v, want %v", status, got, want)
		}
	}
	if IsTransient(errors.New("plain")) || IsTransient(nil) {
		t.Error("an unclassified error must not be transient")
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"token required", Config{}, false},
		{"minimal", Config{Token: "x"}, true},
		{"relative base url", Config{Token: "x", BaseURL: "/v1"}, false},
		{"ftp base url", Config{Token: "x", BaseURL: "ftp://h"}, false},
		{"base url with credentials", Config{Token: "x", BaseURL: "http://u:p@h"}, false},
		{"negative timeout", Config{Token: "x", CallTimeout: -1}, false},
		{"loopback simulator", Config{Token: "x", BaseURL: "http://127.0.0.1:4280"}, true},
	}
	for _, tt := range tests {
		err := tt.cfg.validate()
		if (err == nil) != tt.ok {
			t.Errorf("%s: validate() = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && strings.Contains(err.Error(), "u:p") {
			t.Errorf("%s: error echoes credentials: %v", tt.name, err)
		}
	}
	cfg := Config{Token: "x", WaitStep: 5 * time.Minute}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.WaitStep != MaxWaitStep || cfg.CallTimeout != DefaultCallTimeout || cfg.UserAgent != "migrator" ||
		*cfg.RateLimits != DefaultRateLimits() || cfg.Max429Retries != DefaultMax429Retries {
		t.Errorf("defaults = %+v", cfg)
	}
}

// The token must never reach a log line, an error, or the call record, even
// when the server echoes the Authorization header back.
func TestTokenNeverLeaks(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, token, scheme string }{
		{"macaroon token is sent as FlyV1", "fm2_lJPECAAAAAAAAMSecretMacaroonPart", "FlyV1 "},
		{"other token is sent as Bearer", "oauth-Secret-Token-0123456789", "Bearer "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFake(t, tt.token)
			f.addMachine("app1", "m1", "started", "img:1")
			f.leases["app1/m1"] = &fakeLease{nonce: "theirs", owner: "x@example.com", expires: time.Now().Add(time.Hour)}
			f.echoAuth = true
			f.fault = func(r *http.Request, _ int) (int, map[string]string, string, bool) {
				// A careless proxy echoing the header in a 500.
				return 500, nil, `{"error":"proxy saw ` + r.Header.Get("Authorization") + `"}`, r.Method == http.MethodPost &&
					r.URL.Path == "/v1/apps/app1/machines/m1"
			}
			c, logs := newTestClient(t, f, tt.token, nil)
			rec := &callrec.Log{}
			ctx := callrec.WithLog(context.Background(), rec)
			var errs []error
			_, err := c.GetMachine(ctx, "app1", "m1")
			if err != nil {
				t.Fatalf("GetMachine with the right token: %v", err)
			}
			_, err = c.AcquireLease(ctx, "app1", "m1", time.Minute, "")
			errs = append(errs, err)
			_, err = c.UpdateImage(ctx, "app1", "m1", "img:2", "nonce")
			errs = append(errs, err)
			// Wrong token: the server's 401 echoes what it received.
			bad, badLogs := newTestClient(t, f, "fm2_"+tt.token+"-other", nil)
			_, err = bad.GetMachine(ctx, "app1", "m1")
			errs = append(errs, err)
			if Status(err) != 401 || IsTransient(err) {
				t.Errorf("wrong token: %v, want permanent 401", err)
			}
			for _, r := range f.allRequests() {
				if !strings.HasPrefix(r.Auth, tt.scheme) && !strings.Contains(r.Auth, "-other") {
					t.Errorf("Authorization %q..., want scheme %q", r.Auth[:6], tt.scheme)
				}
			}
			secretBits := []string{tt.token, "Secret"}
			var out strings.Builder
			for _, e := range errs {
				if e == nil {
					t.Fatal("expected an error")
				}
				fmt.Fprintf(&out, "%v\n%+v\n%#v\n", e, e, e)
				var ae *APIError
				if errors.As(e, &ae) && ae.Err != nil {
					fmt.Fprintf(&out, "%v\n", ae.Err)
				}
			}
			out.WriteString(logs.String())
			out.WriteString(badLogs.String())
			for _, call := range rec.Take() {
				fmt.Fprintf(&out, "%+v\n", call)
			}
			for _, s := range secretBits {
				if strings.Contains(out.String(), s) {
					t.Errorf("%q leaked into errors/logs/calls:\n%s", s, out.String())
				}
			}
			if !strings.Contains(out.String(), "[redacted]") {
				t.Errorf("the echoed token should show as [redacted]:\n%s", out.String())
			}
		})
	}
}
