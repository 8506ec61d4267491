//go:build !release

package cli

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/hermes-cloud/migrator/store"
)

// The sandbox's audit summary: one line per run from the audit log and
// the simulator, and the checks that the runs ended as the scenario
// expects.

// sandboxTally is one run's line of the summary.
type sandboxTally struct {
	Machines, Quiet, Loud, Quiesced, Forced, Deferred, GatewayDown int
	NotRunning                                                     int // moved without a drain: not running
	Migrated, RolledBack, Failed, UpToDate, Interrupted            int
	Broadcasts, Pinged                                             int
	TurnsRefused, TurnsInterrupted                                 int
	// RollbackInterrupted: turns cut off when a new instance was given up
	// (rolled back at once, users pinged), not by a drain's recreate.
	RollbackInterrupted int
}

// summarize prints the audit summary and returns what did not go as the
// scenario expects.
func (sb *sandbox) summarize(ctx context.Context, runs []sandboxRun) ([]string, error) {
	out := sb.e.stdout
	tallies := make([]sandboxTally, len(runs))
	for i, sr := range runs {
		t := &tallies[i]
		// The audit view, as `migrator history` reads it.
		err := sb.comp.pool.QueryRow(ctx, `
			SELECT count(*),
				count(*) FILTER (WHERE quiet AND drain_outcome IS DISTINCT FROM 'not_running'),
				count(*) FILTER (WHERE NOT quiet AND drain_outcome IS DISTINCT FROM 'not_running'),
				count(*) FILTER (WHERE drain_outcome = 'quiesced'),
				count(*) FILTER (WHERE drain_outcome = 'deadline_forced'),
				count(*) FILTER (WHERE outcome = 'deferred'), -- never idle, or at the deadline
				count(*) FILTER (WHERE drain_outcome = 'gateway_down'),
				count(*) FILTER (WHERE outcome = 'migrated'),
				count(*) FILTER (WHERE outcome = 'rolled_back'),
				count(*) FILTER (WHERE outcome = 'failed'),
				count(*) FILTER (WHERE outcome = 'skipped_up_to_date'),
				coalesce(sum(active_agents_at_recreate) FILTER (WHERE drain_outcome = 'deadline_forced'), 0),
				count(*) FILTER (WHERE drain_outcome = 'not_running' AND outcome = 'migrated')
			FROM drain_history WHERE run_id = $1`, sr.run.ID).Scan(&t.Machines, &t.Quiet, &t.Loud, &t.Quiesced, &t.Forced,
			&t.Deferred, &t.GatewayDown, &t.Migrated, &t.RolledBack, &t.Failed, &t.UpToDate, &t.Interrupted, &t.NotRunning)
		if err != nil {
			return nil, fmt.Errorf("sandbox: read drain_history of run %d: %w", sr.run.ID, err)
		}
		t.TurnsRefused, t.TurnsInterrupted = sr.turns.Refused, sr.turns.Interrupted
		for _, s := range sr.shutdowns {
			if s.HomeBroadcast {
				t.Broadcasts++
			}
			t.Pinged += s.SessionsPinged
			if s.Image == sr.run.Image {
				t.RollbackInterrupted += s.ActiveAgents
			}
		}
	}

	fmt.Fprintln(out, "\nAudit summary (drain_history; broadcasts, pings and users' turns as the simulated agents saw them)")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RUN\tCAUSE\tDRAINS\tMACHINES\tMIGRATED\tDOWN, NO DRAIN\tQUIESCED\tFORCED\tDEFERRED\tROLLED BACK\tHOME BROADCASTS\tSESSIONS PINGED\tTURNS REFUSED\tTURNS INTERRUPTED\tSTATE")
	for i, sr := range runs {
		t := tallies[i]
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", sr.run.ID, sr.run.Cause, sandboxDrainsWord(t.Quiet, t.Loud),
			t.Machines, t.Migrated, t.NotRunning, t.Quiesced, t.Forced, t.Deferred, t.RolledBack, t.Broadcasts, t.Pinged, t.TurnsRefused,
			t.TurnsInterrupted, sr.run.State)
	}
	tw.Flush()
	for i, sr := range runs {
		if n := tallies[i].RollbackInterrupted; n > 0 {
			fmt.Fprintf(out, "  run %d: %s interrupted by a rollback of a new instance (users pinged)\n", sr.run.ID, sandboxPlural(n, "turn"))
		}
	}
	rows, err := sb.comp.pool.Query(ctx, `
		SELECT run_id, app, machine_id, outcome, coalesce(deciding_signal, '?') || ': ' || coalesce(error, '')
		FROM drain_history WHERE run_id = ANY($1) AND outcome IN ('rolled_back', 'failed') ORDER BY run_id, app`,
		[]int64{runs[0].run.ID, runs[len(runs)-1].run.ID})
	if err != nil {
		return nil, fmt.Errorf("sandbox: read drain_history: %w", err)
	}
	for rows.Next() {
		var id int64
		var app, machine, outcome, reason string
		if err := rows.Scan(&id, &app, &machine, &outcome, &reason); err != nil {
			rows.Close()
			return nil, fmt.Errorf("sandbox: read drain_history: %w", err)
		}
		fmt.Fprintf(out, "  run %d %s %s/%s: %s\n", id, strings.ReplaceAll(outcome, "_", " "), app, machine, reason)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sandbox: read drain_history: %w", err)
	}
	fmt.Fprintln(out, "  DOWN, NO DRAIN: migrated while stopped or suspended: nobody to drain, updated without a launch, left down.\n"+
		"  Quiet drains skip the agent's home-channel \"shutting down\" broadcast; loud ones send it.\n"+
		"  Users whose turn a forced recreate cut off are always pinged, quiet or not.\n"+
		"  A turn is refused when it arrives while the agent drains (\"draining for maintenance, resend shortly\").")
	notes := sb.printNotifications(ctx)
	rolledBack := len(sb.crashed) + len(sb.parked)
	p := append(sandboxCheck(runs, tallies, len(sb.long), rolledBack), sandboxCheckNotes(runs, notes, rolledBack)...)
	p = append(p, sb.checkDown(runs[0])...)
	// The Slack agent was rolled back for its parked platform, and said so.
	for _, m := range sb.parked {
		var outcome, signal, reason string
		err := sb.comp.pool.QueryRow(ctx, `SELECT coalesce(outcome, ''), coalesce(deciding_signal, ''), coalesce(error, '')
			FROM drain_history WHERE run_id = $1 AND machine_id = $2`, runs[0].run.ID, m.ID).Scan(&outcome, &signal, &reason)
		if err != nil {
			return nil, fmt.Errorf("sandbox: read drain_history: %w", err)
		}
		if outcome != string(store.OutcomeRolledBack) || signal != "platform_parked" || !strings.Contains(reason, sandboxBrokenPlatform) ||
			!strings.Contains(reason, sandboxBrokenCode) {
			p = append(p, fmt.Sprintf("%s: %s (%s: %s), want rolled back for its parked %s", m.App, outcome, signal, reason, sandboxBrokenPlatform))
		}
	}
	return p, nil
}

// checkDown says what differs from the story for the agents that were down:
// moved by the auto-update without a drain (drain outcome not_running) and
// still down, on the new image, never started and never sent a SIGTERM.
func (sb *sandbox) checkDown(auto sandboxRun) []string {
	var p []string
	for _, d := range sb.down {
		v := sb.sim.Machine(d.App, d.ID)
		if v.AgentImage != sandboxTarget || (v.State != "stopped" && v.State != "suspended") || v.Wakes != 0 || v.MarkerPresent {
			p = append(p, fmt.Sprintf("%s (%s before): %s on %s, want still down on %s, never drained", d.App, d.State, v.State, v.AgentImage, sandboxTarget))
		}
		for _, s := range auto.shutdowns {
			if s.MachineID == d.ID {
				p = append(p, fmt.Sprintf("%s (%s before) got a SIGTERM", d.App, d.State))
			}
		}
	}
	return p
}

// sandboxCheck says what in the two runs differs from the scenario: the
// auto-update quiet, deferring the long-task agents and rolling back the
// crashed one without broadcasting; the operator run loud, forcing them.
func sandboxCheck(runs []sandboxRun, t []sandboxTally, long, crashed int) []string {
	var p []string
	auto, op := runs[0], runs[1]
	a, o := t[0], t[1]
	wantAuto := store.RunSucceeded
	if crashed > 0 {
		wantAuto = store.RunFailed // a rolled-back machine fails its run
	}
	if auto.run.State != wantAuto {
		p = append(p, fmt.Sprintf("auto-update run ended %s, want %s", auto.run.State, wantAuto))
	}
	if n := a.TurnsInterrupted - a.RollbackInterrupted; n > 0 {
		p = append(p, fmt.Sprintf("auto-update run interrupted %d turns at its recreates, want none (it defers instead of forcing)", n))
	}
	if a.Loud > 0 || a.Broadcasts > 0 {
		p = append(p, fmt.Sprintf("auto-update run: %d loud drains, %d home broadcasts, want none", a.Loud, a.Broadcasts))
	}
	if a.Deferred < long {
		p = append(p, fmt.Sprintf("auto-update run deferred %d agents, want at least %d", a.Deferred, long))
	}
	if a.RolledBack != crashed || a.Failed > 0 {
		p = append(p, fmt.Sprintf("auto-update run: %d rolled back and %d failed, want %d and 0", a.RolledBack, a.Failed, crashed))
	}
	if a.Migrated == 0 {
		p = append(p, "auto-update run migrated no agent")
	}
	if a.NotRunning != 2 {
		p = append(p, fmt.Sprintf("auto-update run moved %d agents without a drain because they were down, want 2 (the stopped and the suspended one)", a.NotRunning))
	}
	if op.run.State != store.RunSucceeded {
		p = append(p, fmt.Sprintf("operator run ended %s, want succeeded", op.run.State))
	}
	if o.TurnsInterrupted < long {
		p = append(p, fmt.Sprintf("operator run interrupted %d turns, want at least %d (the long tasks it forces)", o.TurnsInterrupted, long))
	}
	if o.Quiet > 0 || o.Forced < long || o.Broadcasts < o.Forced || o.Pinged < o.Forced {
		p = append(p, fmt.Sprintf("operator run: %d quiet drains, %d forced, %d home broadcasts, %d pinged; want loud, at least %d forced, each broadcast and pinging",
			o.Quiet, o.Forced, o.Broadcasts, o.Pinged, long))
	}
	return p
}

func sandboxDrainsWord(quiet, loud int) string {
	switch {
	case loud == 0 && quiet > 0:
		return "quiet"
	case quiet == 0 && loud > 0:
		return "loud"
	case quiet == 0 && loud == 0:
		return "none"
	}
	return fmt.Sprintf("%d quiet, %d loud", quiet, loud)
}
