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
			[]string{HermesRecordedLoud, HermesNoBlindRollback, HermesCronUnseen}},
		{"0.17.2 loud: nothing to make loud", "0.17.2", loud, true, false, []string{HermesNoBlindRollback, HermesCronUnseen}},
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

// quietFor: an idle look counts once the agent was quiet for q. With
// active_sessions, each quiet look (sessions 0 too) shows the 300 s before
// it; without the field, only looks q apart do (blind between them).
func TestQuietFor(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	zero, two := 0, 2
	for _, tc := range []struct {
		name     string
		q        time.Duration
		active   int
		sessions *int
		since    time.Time
		want     bool
		next     time.Duration // the next look after now when not quiet
	}{
		{"no quiet needed", 0, 0, &two, time.Time{}, true, 0},
		{"active_sessions 0 shows 300 s at once", 2 * time.Minute, 0, &zero, now, true, 0},
		{"active_sessions 0 for 6m needs 1m of quiet looks", 6 * time.Minute, 0, &zero, now, false, time.Minute},
		{"… which it has", 6 * time.Minute, 0, &zero, now.Add(-time.Minute), true, 0},
		{"sessions active: not quiet, however long nothing was in flight; next look in a fifth of 300 s", 2 * time.Minute, 0, &two, now.Add(-time.Hour), false, time.Minute},
		{"no active_sessions field, first idle look", 2 * time.Minute, 0, nil, now, false, 2 * time.Minute},
		{"no active_sessions field, idle since 1m", 2 * time.Minute, 0, nil, now.Add(-time.Minute), false, time.Minute},
		{"no active_sessions field, idle since 2m", 2 * time.Minute, 0, nil, now.Add(-2 * time.Minute), true, 0},
		{"work in flight", 2 * time.Minute, 1, &zero, now.Add(-time.Hour), false, 30 * time.Second},
	} {
		st := gateway.Status{Running: true, State: gateway.StateRunning, ActiveAgents: tc.active, ActiveSessions: tc.sessions}
		got, how := quietFor(tc.q, st, tc.since, now)
		if got != tc.want || got == (how == "") {
			t.Errorf("%s: quiet %v (%q), want %v", tc.name, got, how, tc.want)
		}
		if !got {
			if next := quietNext(tc.q, st, tc.since, now, func() time.Duration { return 30 * time.Second }).Sub(now); next != tc.next {
				t.Errorf("%s: next look in %s, want %s", tc.name, next, tc.next)
			}
		}
	}
}
