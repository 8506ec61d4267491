package orchestrator

// Hermes by feature: what an agent's Hermes version (its /api/status
// "version", read before the drain) changes in what serve does, feature by
// feature (internal/hermes has the table and its sources):
//
//   - quiet_flag lacking: a quiet decision is recorded and sent loud
//     (quiet=false, the rule says why): the gateway ignores the flag and
//     broadcasts at the shutdown anyway, and the audit must not say quiet.
//   - boot_self_heal lacking: a rollback onto the image the agent ran is
//     not attempted (rollbackRefusal): recreated after a drained stop, or
//     after a new instance that was degraded, that Hermes registers its
//     gateway with a down marker and the agent is dark; the machine fails
//     for a person, on the new image, with the reason.
//   - counts_cron lacking: active_agents counts chat turns only, and the
//     scheduler keeps starting cron jobs while draining; /api/status has no
//     field for cron work (a cron job's own session may be counted in
//     active_sessions, which hermes-agent does not promise), so the drain is
//     flagged in the audit (a hermes.cron_unseen event) and goes on.
//
// An unknown version (the status unread, or a version that cannot be
// compared) changes nothing: serve decides as without the table, and the
// begin's echo still records whether the gateway took the quiet flag.
//
// Work Hermes does not count: a background delegation (a subagent still
// running after its turn ended) or a background terminal process is not in
// active_agents. With the decision's IdleQuietFor (policy idle_quiet_for),
// a moment counts as idle only once the agent showed nothing in flight for
// that long (quietFor): by Hermes's own clock, when /api/status shows
// active_sessions 0 (no session active in the last 300 s) and IdleQuietFor
// is at most 300 s; else by looks that found nothing in flight for that
// long, none finding work between (QuietSince: when the run of them began). The drain's quiescence read applies the same
// rule from the first quiescent read (drains begun at a proven idle moment
// excepted: nothing could start since but what the slipped-turn rule
// handles).

import (
	"context"
	"fmt"
	"time"

	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/hermes"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// HermesNote is one thing an agent's Hermes version changes in what serve
// does with it.
type HermesNote struct {
	Feature hermes.Feature `json:"feature"`
	// Effect: HermesRecordedLoud, HermesNoBlindRollback or
	// HermesCronUnseen.
	Effect string `json:"effect"`
	// Reason is one line for people.
	Reason string `json:"reason"`
}

// The effects of a lacking feature.
const (
	// HermesRecordedLoud: a quiet decision recorded and sent loud.
	HermesRecordedLoud = "recorded_loud"
	// HermesNoBlindRollback: a rollback onto the agent's image would not
	// be attempted.
	HermesNoBlindRollback = "no_blind_rollback"
	// HermesCronUnseen: cron work is not in active_agents; flagged.
	HermesCronUnseen = "cron_unseen"
)

// hermesDecision is decision d as serve records it for an agent whose
// Hermes reported version, with what the version changed: the table's
// rules above, for a machine that is drained (running) or not.
func hermesDecision(t hermes.Table, version string, d policy.Decision, running bool) (policy.Decision, []HermesNote) {
	var notes []HermesNote
	if !running {
		return d, nil // nobody is on it: no drain, no broadcast, no launch
	}
	if d.Quiet && t.Has(version, hermes.QuietFlag) == hermes.Lacks {
		d.Quiet = false
		d.Rule += " (loud: Hermes too old for suppress_notification)"
		notes = append(notes, HermesNote{Feature: hermes.QuietFlag, Effect: HermesRecordedLoud, Reason: fmt.Sprintf(
			"Hermes %s ignores suppress_notification (hermes-agent #54824, since %s): its shutdown broadcasts to the home channel anyway, so the drain is recorded and sent loud",
			version, t.Min(hermes.QuietFlag))})
	}
	if t.Has(version, hermes.BootSelfHeal) == hermes.Lacks {
		notes = append(notes, HermesNote{Feature: hermes.BootSelfHeal, Effect: HermesNoBlindRollback, Reason: fmt.Sprintf(
			"Hermes %s lacks boot self-heal (hermes-agent #55397, since %s): a rollback onto it would leave the agent dark, so none is attempted; a failed new image fails the machine for a person",
			version, t.Min(hermes.BootSelfHeal))})
	}
	if t.Has(version, hermes.CountsCron) == hermes.Lacks {
		notes = append(notes, HermesNote{Feature: hermes.CountsCron, Effect: HermesCronUnseen, Reason: fmt.Sprintf(
			"Hermes %s counts chat turns only in active_agents and keeps starting cron jobs while draining (hermes-agent #63891, since %s): /api/status shows no cron work, so a running cron job may be cut off unseen",
			version, t.Min(hermes.CountsCron))})
	}
	return d, notes
}

// hermesDecide applies the agent's Hermes version to decision d, before it
// is recorded: the version from the signals read before (a look for an
// idle moment), else from one status read now, which also becomes the
// signals the new image is judged against. Each note is an event of kind
// "hermes.<effect>" in the audit. It returns the detail for the decided
// event (nil when there is nothing to say).
func (s *step) hermesDecide(ctx context.Context, d *policy.Decision, running bool) map[string]any {
	if !running {
		return nil
	}
	before := gateway.DecodeSignals(s.m.SignalsBefore)
	if before == nil {
		if st, err := s.o.gw.Status(ctx, s.target()); err == nil {
			sig := st.Signals(s.now())
			s.m.SignalsBefore, before = encodeSignals(sig), &sig
		}
	}
	version := ""
	if before != nil {
		version = before.Version
	}
	t := s.o.cfg.Hermes
	adjusted, notes := hermesDecision(t, version, *d, running)
	*d = adjusted
	detail := map[string]any{"version": version}
	if version == "" {
		detail["version"] = "unknown"
	}
	if lacks := t.LackNames(version); len(lacks) > 0 {
		detail["lacks"] = lacks
	}
	for _, n := range notes {
		s.events = append(s.events, store.Event{Kind: "hermes." + n.Effect, Target: s.m.Target(),
			Detail: map[string]any{"feature": n.Feature, "version": version, "reason": n.Reason}})
	}
	if len(notes) > 0 {
		detail["notes"] = notes
	}
	return detail
}

// rollbackRefusal says why a rollback that would launch the old image must
// not be attempted ("" when it may): the agent's Hermes before the update
// lacks boot self-heal, so after this drained stop (or a new instance that
// was degraded) its gateway would not start and the agent would be dark.
// An unknown version is rolled back as before.
func (s *step) rollbackRefusal(reason, back string) string {
	if !s.m.Launch {
		return "" // left down: no boot now
	}
	before := gateway.DecodeSignals(s.m.SignalsBefore)
	if before == nil || s.o.cfg.Hermes.Has(before.Version, hermes.BootSelfHeal) != hermes.Lacks {
		return ""
	}
	return fmt.Sprintf("%s; rollback to %s not attempted: the agent ran Hermes %s, without boot self-heal of a saved draining or degraded state "+
		"(hermes-agent #55397, since %s), so it would come back with its gateway down (dark); left on %s for a person to restore",
		reason, back, before.Version, s.o.cfg.Hermes.Min(hermes.BootSelfHeal), s.m.ToImage)
}

// quietShown: the status shows, by Hermes's own clock, that no session was
// active for at least q (active_sessions 0 covers the last 300 s).
func quietShown(st gateway.Status, q time.Duration) bool {
	return st.ActiveSessions != nil && *st.ActiveSessions == 0 && q <= hermes.ActiveSessionWindow
}

// quietLook says whether an idle look (nothing in flight now) continues
// the agent's quiet: when /api/status has active_sessions it must be 0 too
// (a turn that came and went between two looks is seen only there: the
// session it touched stays active for 300 s); an older Hermes without the
// field has only active_agents.
func quietLook(st gateway.Status) bool {
	return st.ActiveAgents == 0 && (st.ActiveSessions == nil || *st.ActiveSessions == 0)
}

// quietFor reports whether an idle look also shows the agent quiet for q,
// given since, when the current run of quiet looks began (QuietSince,
// this look included). With active_sessions every quiet look shows the 300
// s before it, so the run needs to be only q - 300 s long (0 for the
// auto-update's 2m); without it, q long: two looks q apart, which cannot
// see a turn that came and went between them. how names which ("" when not
// quiet).
func quietFor(q time.Duration, st gateway.Status, since, now time.Time) (ok bool, how string) {
	switch {
	case q <= 0:
		return true, "none needed"
	case !quietLook(st) || since.IsZero():
		return false, ""
	case st.ActiveSessions != nil && now.Sub(since)+hermes.ActiveSessionWindow >= q:
		return true, "active_sessions 0 (no session active for 300 s)"
	case st.ActiveSessions == nil && now.Sub(since) >= q:
		return true, "nothing in flight at every look for " + now.Sub(since).Round(time.Second).String() + " (no active_sessions)"
	}
	return false, ""
}

// quietNext is when to look again at an agent with nothing in flight whose
// quiet is not yet shown: when it would be, if it holds; with sessions
// still active, after a fifth of the 300 s a session stays counted after
// its last activity (which /api/status does not say): looking sooner
// mostly finds it still counted, and every look is a write; otherwise
// (work in flight) after the usual back-off, pause.
//
// pause is called only when it is needed (it may read the run's slot
// queue).
func quietNext(q time.Duration, st gateway.Status, since, now time.Time, pause func() time.Duration) time.Time {
	switch {
	case st.ActiveAgents == 0 && st.ActiveSessions != nil && *st.ActiveSessions > 0:
		return now.Add(hermes.ActiveSessionWindow / 5)
	case !quietLook(st) || since.IsZero():
		return now.Add(pause())
	case st.ActiveSessions != nil:
		return since.Add(q - hermes.ActiveSessionWindow)
	}
	return since.Add(q)
}

// drainQuiet reports whether a quiescent drain may end now: the decision
// asks no quiet, or the drain was begun at an idle moment (its quiet was
// shown before the begin), or the agent shows it (quietShown), or it has
// been quiescent since QuiescedAt for at least q. The first quiescent read
// sets QuiescedAt (a read that is not quiescent clears it).
func (s *step) drainQuiet(st gateway.Status, now time.Time) (ok bool, q time.Duration) {
	d := s.w.Drain
	if !st.Quiescent() {
		d.QuiescedAt = time.Time{}
		return false, 0
	}
	if !st.Running || s.idleBegun() {
		return true, 0
	}
	q = s.decide(s.m.Region, s.m.FromImage, s.m.Labels).IdleQuietFor
	if q <= 0 || quietShown(st, q) {
		return true, q
	}
	if d.QuiescedAt.IsZero() {
		d.QuiescedAt = now
	}
	return now.Sub(d.QuiescedAt) >= q, q
}
