package orchestrator

import (
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
)

func sig(nous string, plats ...string) gateway.Signals {
	s := gateway.Signals{GatewayRunning: true, GatewayState: "running", NousSession: nous, Platforms: map[string]gateway.Platform{}}
	for _, p := range plats {
		name, state, _ := strings.Cut(p, "=")
		code := ""
		state, code, _ = strings.Cut(state, ":")
		pl := gateway.Platform{State: state, ErrorCode: code}
		if strings.HasSuffix(pl.State, "!") {
			pl.State, pl.NeedsAttention = strings.TrimSuffix(pl.State, "!"), true
		}
		s.Platforms[name] = pl
	}
	return s
}

// The agent is judged against its own before: a platform up before must be
// up again (parked: at once; otherwise by the end of the window), one down
// before does not count, a valid Nous session must not turn terminal.
func TestJudgeAgent(t *testing.T) {
	for _, tc := range []struct {
		name          string
		before        *gateway.Signals
		after         gateway.Signals
		final         bool
		want          string // "" healthy, else signal; "~" prefix: pending
		reasonHas     []string
		regressedWant bool
	}{
		{name: "no before: nothing to compare", before: nil, after: sig("terminal", "telegram=fatal:x"), want: ""},
		{name: "same as before", before: ptr(sig("valid", "telegram=connected", "slack=connected")),
			after: sig("valid", "telegram=connected", "slack=running"), want: ""},
		{name: "parked platform: at once, naming it and its code",
			before: ptr(sig("valid", "telegram=connected", "slack=connected")),
			after:  sig("valid", "telegram=fatal:telegram_token_lock", "slack=connected"),
			want:   signalPlatformParked, regressedWant: true,
			reasonHas: []string{"platform telegram is fatal", "error_code telegram_token_lock", "connected before"}},
		{name: "down before: does not count", before: ptr(sig("valid", "telegram=fatal:revoked", "slack=connected")),
			after: sig("valid", "telegram=fatal:revoked", "slack=connected"), want: ""},
		{name: "down before (retrying), parked after: still not counted", before: ptr(sig("valid", "telegram=retrying:network")),
			after: sig("valid", "telegram=fatal:x"), want: ""},
		{name: "retrying after: pending", before: ptr(sig("valid", "discord=connected")),
			after: sig("valid", "discord=retrying:network"), want: "~" + signalPlatformNotUp, reasonHas: []string{"discord is retrying (error_code network)"}},
		{name: "retrying at the end of the window: a regression", before: ptr(sig("valid", "discord=connected")),
			after: sig("valid", "discord=retrying:network"), final: true, want: signalPlatformNotUp, regressedWant: true},
		{name: "retrying past the attention threshold: parked", before: ptr(sig("valid", "discord=connected")),
			after: sig("valid", "discord=retrying!:network"), want: signalPlatformParked, regressedWant: true, reasonHas: []string{"needs attention"}},
		{name: "missing after (still starting up): pending", before: ptr(sig("valid", "slack=connected")),
			after: sig("valid"), want: "~" + signalPlatformNotUp, reasonHas: []string{"slack is not reported"}},
		// disabled is informational (hermes-agent's status route,
		// _component_health): a multiplexed profile's platform whose
		// ingress the default profile owns. Never a regression, not even
		// at the end of the window.
		{name: "up before, disabled after: not a regression", before: ptr(sig("valid", "telegram=connected", "slack=connected")),
			after: sig("valid", "telegram=disabled", "slack=connected"), final: true, want: ""},
		{name: "disabled before and after: nothing", before: ptr(sig("valid", "telegram=disabled")),
			after: sig("valid", "telegram=disabled"), final: true, want: ""},
		{name: "a new platform after: ignored", before: ptr(sig("valid", "slack=connected")),
			after: sig("valid", "slack=connected", "matrix=fatal:x"), want: ""},
		{name: "unknown state after: pending", before: ptr(sig("valid", "slack=ok")),
			after: sig("valid", "slack=reticulating"), want: "~" + signalPlatformNotUp},
		{name: "nous valid → terminal", before: ptr(sig("valid", "slack=connected")),
			after: sig("terminal", "slack=connected"), want: signalNousTerminal, regressedWant: true, reasonHas: []string{"terminal", "valid before"}},
		{name: "nous unknown before: terminal after does not count", before: ptr(sig("unknown")), after: sig("terminal"), want: ""},
		{name: "nous terminal before and after", before: ptr(sig("terminal")), after: sig("terminal"), want: ""},
		{name: "nous valid → unknown: not a regression", before: ptr(sig("valid")), after: sig("unknown"), want: ""},
		{name: "an older Hermes without the field after", before: ptr(sig("valid")), after: sig(""), want: ""},
		{name: "parked beats nous beats pending", before: ptr(sig("valid", "a=connected", "b=connected")),
			after: sig("terminal", "a=retrying", "b=fatal:z"), want: signalPlatformParked, regressedWant: true},
	} {
		v := judgeAgent(tc.before, tc.after, tc.final)
		got := v.signal
		if v.pending {
			got = "~" + got
		}
		if got != tc.want || v.regressed != tc.regressedWant {
			t.Errorf("%s: verdict %+v, want %q (regressed %t)", tc.name, v, tc.want, tc.regressedWant)
		}
		for _, part := range tc.reasonHas {
			if !strings.Contains(v.reason, part) {
				t.Errorf("%s: reason %q lacks %q", tc.name, v.reason, part)
			}
		}
	}
}

func ptr[T any](v T) *T { return &v }

// Only what happened after the update, and did not stop on request, is a
// crash.
func TestFlyCrash(t *testing.T) {
	upd := time.Date(2026, 7, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return upd.Add(d) }
	stop := flymachines.Event{Type: "exit", At: upd, Exit: &flymachines.Exit{RequestedStop: true, Signal: 15}}
	for _, tc := range []struct {
		name   string
		events []flymachines.Event // newest first
		want   string
	}{
		{"none", nil, ""},
		{"the update's own SIGTERM", []flymachines.Event{{Type: "start", At: at(3 * time.Second)}, stop}, ""},
		{"a crash after the update", []flymachines.Event{{Type: "start", At: at(14 * time.Second)},
			{Type: "exit", At: at(11 * time.Second), Exit: &flymachines.Exit{ExitCode: 1, Restarting: true, RestartCount: 1}}, stop}, signalFlyExit},
		{"an OOM kill", []flymachines.Event{{Type: "exit", At: at(time.Minute), Exit: &flymachines.Exit{ExitCode: 137, OOMKilled: true}}}, signalFlyOOM},
		{"a restart event", []flymachines.Event{{Type: "restart", Status: "restarting", At: at(time.Second)}}, signalFlyRestart},
		{"a crash before the update (the old instance)", []flymachines.Event{stop,
			{Type: "exit", At: upd.Add(-time.Minute), Exit: &flymachines.Exit{ExitCode: 1}}}, ""},
		{"a stop asked for after the update", []flymachines.Event{{Type: "exit", At: at(time.Minute), Exit: &flymachines.Exit{RequestedStop: true}}}, ""},
		{"a clean exit (code 0, not restarting)", []flymachines.Event{{Type: "exit", At: at(time.Minute), Exit: &flymachines.Exit{}}}, ""},
	} {
		got, reason := flyCrash(tc.events, upd)
		if got != tc.want || (got != "" && !strings.Contains(reason, "after the update")) {
			t.Errorf("%s: %q (%s), want %q", tc.name, got, reason, tc.want)
		}
	}
}
