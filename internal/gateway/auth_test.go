package gateway

import (
	"context"
	"net/http"
	"strings"
	"testing"
)

// The three 401s hermes-agent writes reach Explain401 over HTTP, and the
// version (against the configured minimum) tells the login gate's two
// meanings apart.
func TestExplain401(t *testing.T) {
	const (
		loginGate   = `{"error":"unauthenticated","detail":"Unauthorized","reason":"no_cookie","login_url":"/login"}`
		expired     = `{"error":"session_expired","detail":"Unauthorized","reason":"invalid_or_expired_session","login_url":"/login"}`
		drainRoute  = `{"error":"unauthenticated","detail":"Unauthorized"}`
		loopback401 = `{"detail":"Unauthorized"}`
	)
	for _, tc := range []struct {
		name, body, version, min string
		layer                    AuthLayer
		want                     Readiness
		says                     []string
	}{
		{"drain route refused our secret", drainRoute, "0.21.5", "0.21.0", AuthDrainRoute, NoSecret, []string{"drain route itself", "another drain secret"}},
		{"loopback detail only", loopback401, "0.21.5", "0.21.0", AuthOther, NoSecret, []string{"no drain secret, or another"}},
		{"login gate, older Hermes", loginGate, "0.19.2", "0.21.0", AuthLoginGate, NoDrainRoute, []string{"login gate before routing, reason no_cookie", "an older Hermes 0.19.2 (below 0.21.0) without the drain route"}},
		{"login gate, v-prefixed tags", loginGate, "v0", "v1", AuthLoginGate, NoDrainRoute, []string{"older Hermes"}},
		{"login gate, new enough: no secret", expired, "0.21.5", "0.21.0", AuthLoginGate, NoSecret, []string{"reason invalid_or_expired_session", "Hermes 0.21.5 has the drain route but no drain secret"}},
		{"login gate, the minimum itself", loginGate, "0.21.0", "0.21.0", AuthLoginGate, NoSecret, []string{"no drain secret"}},
		{"login gate, no minimum", loginGate, "0.19.2", "", AuthLoginGate, NoSecretOrRoute, []string{"an older Hermes without the drain route, or no drain secret configured (version 0.19.2)", MinDrainVersionEnv}},
		{"login gate, version unknown", loginGate, "", "0.21.0", AuthLoginGate, NoSecretOrRoute, []string{"version unknown cannot be compared with the minimum 0.21.0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, func(w http.ResponseWriter, r *http.Request, n int) { reply(w, 401, tc.body) })
			c, _ := newClient(t, prefixTemplate(s), nil)
			res := c.Probe(context.Background(), testTarget)
			if res.Readiness != NoSecret {
				t.Fatalf("probe = %+v: a 401 classifies as no_secret before it is explained", res)
			}
			he, ok := res.Err.(*HTTPError)
			if !ok || he.Layer() != tc.layer {
				t.Fatalf("err %#v: want layer %s", res.Err, tc.layer)
			}
			got, text := Explain401(res.Err, tc.version, tc.min)
			if got != tc.want {
				t.Errorf("Explain401 = %s (%s), want %s", got, text, tc.want)
			}
			for _, part := range tc.says {
				if !strings.Contains(text, part) {
					t.Errorf("explanation %q lacks %q", text, part)
				}
			}
			if strings.Contains(text, "\n") {
				t.Errorf("explanation is not one line: %q", text)
			}
		})
	}
	// Not a 401: the category as Classify has it, nothing to add.
	if r, text := Explain401(&HTTPError{StatusCode: 404}, "0.1", "0.2"); r != NoDrainRoute || text != "" {
		t.Errorf("404: %s %q", r, text)
	}
	if r, text := Explain401(nil, "", ""); r != Ready || text != "" {
		t.Errorf("nil: %s %q", r, text)
	}
}

func TestCompareVersions(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
		ok   bool
	}{
		{"0.21.5", "0.21.0", 1, true},
		{"0.21", "0.21.0", 0, true},
		{"v0.21.0", "0.21.0", 0, true},
		{"0.9.9", "0.10.0", -1, true},
		{"1.2.0rc1", "1.2.0", -1, true},
		{"1.2.0rc2", "1.2.0rc1", 1, true},
		{"v0", "v1", -1, true},
		{"v2", "v1", 1, true},
		{"", "0.1", 0, false},
		{"main", "0.1", 0, false},
		{"0.1", "abc", 0, false},
	} {
		got, ok := CompareVersions(tc.a, tc.b)
		if got != tc.want || ok != tc.ok {
			t.Errorf("CompareVersions(%q, %q) = %d, %t; want %d, %t", tc.a, tc.b, got, ok, tc.want, tc.ok)
		}
	}
}

// Which platform states serve and which will not come back on their own.
func TestPlatformUpParked(t *testing.T) {
	for _, tc := range []struct {
		p          Platform
		up, parked bool
	}{
		{Platform{State: "connected"}, true, false},
		{Platform{State: "running"}, true, false},
		{Platform{State: "ok"}, true, false},
		{Platform{State: "fatal", ErrorCode: "telegram_token_lock"}, false, true},
		// disabled is informational (a served profile's platform the
		// default profile's gateway runs): never parked.
		{Platform{State: "disabled"}, false, false},
		{Platform{State: "disabled", NeedsAttention: true}, false, false},
		{Platform{State: "retrying", ErrorCode: "network"}, false, false},
		{Platform{State: "retrying", NeedsAttention: true}, false, true},
		{Platform{State: "connected", NeedsAttention: true}, true, false},
		{Platform{State: "paused"}, false, false},
		{Platform{State: "disconnected"}, false, false},
		{Platform{State: ""}, false, false},
		{Platform{State: "a_state_from_the_future"}, false, false},
	} {
		if tc.p.Up() != tc.up || tc.p.Parked() != tc.parked {
			t.Errorf("%+v: up %t parked %t, want %t %t", tc.p, tc.p.Up(), tc.p.Parked(), tc.up, tc.parked)
		}
	}
}

func TestChanges(t *testing.T) {
	up := Platform{State: "connected"}
	before := &Signals{NousSession: "valid", Platforms: map[string]Platform{"telegram": up, "discord": up, "slack": {State: "fatal"}}}
	for _, tc := range []struct {
		before, after *Signals
		want          string
	}{
		{nil, nil, ""},
		{before, nil, "before: discord, telegram up; slack fatal; nous valid"},
		{nil, &Signals{}, "after: no platforms"},
		{before, before, "unchanged: discord, telegram up; slack fatal; nous valid"},
		{before, &Signals{NousSession: "terminal", Platforms: map[string]Platform{"telegram": {State: "fatal", ErrorCode: "telegram_token_lock"},
			"discord": up, "slack": {State: "fatal"}}}, "telegram connected→fatal (telegram_token_lock), nous valid→terminal"},
		{before, &Signals{NousSession: "valid", Platforms: map[string]Platform{"telegram": up, "slack": up}},
			"discord connected→-, slack fatal→connected"},
	} {
		if got := Changes(tc.before, tc.after); got != tc.want {
			t.Errorf("Changes = %q, want %q", got, tc.want)
		}
	}
}
