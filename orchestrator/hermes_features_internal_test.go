package orchestrator

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/hermes"
	"github.com/hermes-cloud/migrator/policy"
)

// hermesDecision: what an agent's Hermes version changes in its decision,
// feature by feature; an unknown version changes nothing; a machine that is
// not running has no drain to change.
func TestHermesDecision(t *testing.T) {
	quiet := policy.Decision{Quiet: true, Rule: "default:auto-update"}
	loud := policy.Decision{Quiet: false, Rule: "default:operator"}
	for _, tc := range []struct {
		name      string
		version   string
		d         policy.Decision
		running   bool
		wantQuiet bool
		effects   []string
	}{
		{"0.17.2 quiet: loud, no rollback, cron unseen", "0.17.2", quiet, true, false,
			[]string{HermesRecordedLoud, HermesRollbackRefused, HermesCronUnseen}},
		{"0.17.2 loud: nothing to make loud", "0.17.2", loud, true, false, []string{HermesRollbackRefused, HermesCronUnseen}},
		{"0.18.0: quiet kept, cron unseen", "0.18.0", quiet, true, true, []string{HermesCronUnseen}},
		{"0.19.0: nothing", "0.19.0", quiet, true, true, nil},
		{"0.21.5: nothing", "v0.21.5", quiet, true, true, nil},
		{"unknown version: as decided", "", quiet, true, true, nil},
		{"a dev build: as decided", "dev", quiet, true, true, nil},
		{"not running: no drain to change", "0.17.2", quiet, false, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, notes := hermesDecision(hermes.Default(), tc.version, tc.d, tc.running)
			if got.Quiet != tc.wantQuiet {
				t.Errorf("quiet %v, want %v", got.Quiet, tc.wantQuiet)
			}
			var effects []string
			for _, n := range notes {
				effects = append(effects, n.Effect)
				if !strings.Contains(n.Reason, tc.version) || !strings.Contains(n.Reason, "hermes-agent #") {
					t.Errorf("reason %q names neither the version nor its source", n.Reason)
				}
			}
			if !slices.Equal(effects, tc.effects) {
				t.Errorf("effects %v, want %v", effects, tc.effects)
			}
			if tc.d.Quiet && !got.Quiet && !strings.Contains(got.Rule, "loud: Hermes too old for suppress_notification") {
				t.Errorf("rule %q does not say why it is loud", got.Rule)
			}
			if got.Quiet == tc.d.Quiet && got.Rule != tc.d.Rule {
				t.Errorf("rule changed to %q without a reason", got.Rule)
			}
		})
	}
	// An override of the table moves the line.
	tab, err := hermes.Parse("quiet_flag=0.18.1")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := hermesDecision(tab, "0.18.0", quiet, true); got.Quiet {
		t.Error("quiet_flag=0.18.1: 0.18.0 kept quiet")
	}
}

// quietFor: an idle look counts once the agent was quiet for q: by
// active_sessions 0 (q within its 300 s), or by looks that found nothing in
// flight since long enough.
func TestQuietFor(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	zero, two := 0, 2
	for _, tc := range []struct {
		name     string
		q        time.Duration
		sessions *int
		since    time.Time
		want     bool
	}{
		{"no quiet needed", 0, &two, now, true},
		{"active_sessions 0 shows 300 s", 2 * time.Minute, &zero, now, true},
		{"active_sessions 0 cannot show more than 300 s", 6 * time.Minute, &zero, now, false},
		{"active_sessions absent, first idle look", 2 * time.Minute, nil, now, false},
		{"sessions active, idle since 1m", 2 * time.Minute, &two, now.Add(-time.Minute), false},
		{"sessions active, idle since 2m", 2 * time.Minute, &two, now.Add(-2 * time.Minute), true},
		{"no run of idle looks", 2 * time.Minute, &two, time.Time{}, false},
	} {
		st := gateway.Status{Running: true, State: gateway.StateRunning, ActiveSessions: tc.sessions}
		if got, how := quietFor(tc.q, st, tc.since, now); got != tc.want || got == (how == "") {
			t.Errorf("%s: quiet %v (%q), want %v", tc.name, got, how, tc.want)
		}
	}
}
