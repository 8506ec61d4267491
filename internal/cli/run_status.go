package cli

// run status: one run's settings and change (names only), its machines
// counted by state and by outcome, what its waiting machines wait for (a
// machine another run is moving), and the machines in flight (a draining one with its wait, its
// deadline and its agent's last active_agents), as text or JSON.

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/store"
)

func newRunStatusCmd(e *env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status ID",
		Short: "Show a run: its settings, machines by state and by outcome, and the machines in flight",
		Long: "Show a run: its settings, its machines counted by state and by outcome, and the machines\n" +
			"in flight now; for a draining machine, how long it has waited, its deadline and the\n" +
			"gateway's last active_agents. Wait times are on the fleet's clock.\n\n" + runExitCodes,
		Example: "  migrator run status 42\n  migrator run status 42 --json | jq .counts.by_outcome",
		Args:    checkArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			id, err := parseRunID(cmd, args[0])
			if err != nil {
				return err
			}
			clk, err := loadClock(e)
			if err != nil {
				return err
			}
			st, closeDB, err := openRunStore(ctx, e)
			if err != nil {
				return err
			}
			defer closeDB()
			snap, err := st.Snapshot(ctx, id)
			if errors.Is(err, store.ErrNotFound) {
				return usagef("run %d not found (see `migrator run list`)", id)
			}
			if err != nil {
				return fmt.Errorf("run status %d: %w", id, err)
			}
			now := clk.Now()
			if asJSON {
				out := newRunJSON(snap.Run, snap.Counts, snap.InFlight, now)
				for _, r := range snap.Releases {
					out.Releases = append(out.Releases, releaseJSON{App: r.App, State: r.State, ReleaseID: r.ReleaseID,
						Version: r.Version, Status: r.Status, Error: r.Error})
				}
				for _, w := range snap.WaitingOnRuns {
					out.WaitingOnRuns = append(out.WaitingOnRuns, waitingJSON{App: w.App, MachineID: w.MachineID, Run: w.OtherRun,
						Migration: w.OtherMigration, State: w.OtherState, Combined: w.Combined})
				}
				return writeJSON(e.stdout, out)
			}
			printRunStatus(e.stdout, snap, now)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the run as a JSON object (id, state, counts.by_state, counts.by_outcome, in_flight, …)")
	return cmd
}

func printRunStatus(w io.Writer, snap store.RunSnapshot, now time.Time) {
	r, c := snap.Run, snap.Counts
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s:\t%s\n", k, fmt.Sprintf(format, args...)) }
	state := string(r.State)
	if r.StateReason != "" {
		state += " (" + r.StateReason + ")"
	}
	row("run", "%d", r.ID)
	row("state", "%s", state)
	row("cause", "%s", r.Cause)
	switch {
	case r.Image == "":
		row("image", "none: each machine keeps the digest it runs")
	case r.Image != r.TargetImage:
		row("image", "%s (pinned from %s)", r.Image, r.TargetImage)
	default:
		row("image", "%s", r.Image)
	}
	if ch := orchestrator.RunChange(r); ch.BeyondImage() {
		row("change", "%s", ch)
	}
	if r.Lane == store.LaneCustomer {
		row("lane", "customer (its own budget: policy budget_lane; never waits for fleet slots)")
	}
	row("selector", "%s", describeSelector(r.Selector))
	who := r.RequestedBy
	if r.Reason != "" {
		who += ": " + r.Reason
	}
	row("requested by", "%s", who)
	if r.IdempotencyKey != "" {
		row("idempotency key", "%s", r.IdempotencyKey)
	}
	budget := fmt.Sprintf("max unavailable %d", r.MaxUnavailable)
	if r.MaxUnavailableSpec != "" && r.MaxUnavailableSpec != strconv.Itoa(r.MaxUnavailable) {
		budget += " (" + r.MaxUnavailableSpec + ")"
	}
	budget += fmt.Sprintf(", canary %d, failure threshold %d", r.Canary, r.FailureThreshold)
	if r.DeadlineOverride > 0 {
		budget += ", drain deadline " + r.DeadlineOverride.String()
	}
	if r.IdleWaitOverride != nil {
		budget += ", idle wait " + r.IdleWaitOverride.String()
	}
	if r.CanaryBakeOverride != nil {
		budget += ", canary bake " + r.CanaryBakeOverride.String()
	}
	row("budget", "%s", budget)
	row("policy version", "%s", r.PolicyVersion)
	times := "created " + stamp(r.CreatedAt)
	if !r.StartedAt.IsZero() {
		times += ", started " + stamp(r.StartedAt)
	}
	if !r.FinishedAt.IsZero() {
		times += ", finished " + stamp(r.FinishedAt) + " (" + r.FinishedAt.Sub(r.StartedAt).Round(time.Second).String() + ")"
	}
	row("times", "%s", times)
	row("machines", "%d: %s", c.Total, countList(c.ByState, stateOrder))
	row("outcomes", "%s", countList(c.ByOutcome, outcomeOrder))
	if c.WaitingForIdle > 0 {
		row("waiting for idle", "%d pending (their agents were busy when looked at: not draining, no slot held)", c.WaitingForIdle)
	}
	if n := c.ByState[store.StateBaking]; n > 0 {
		var until time.Time
		for _, v := range snap.InFlight {
			if v.State == store.StateBaking && v.BakeUntil.After(until) {
				until = v.BakeUntil
			}
		}
		row("baking", "%d %s watched (Fly events, gateway, platforms, Nous session) until %s, %s from now; the rest wait",
			n, plural(n, "canary", "canaries"), stamp(until), short(max(until.Sub(now), 0)))
	}
	if !r.AcknowledgedAt.IsZero() {
		row("resumed", "%s (failures before it no longer hold the run back)", stamp(r.AcknowledgedAt))
	}
	if text := releasesText(snap.Releases); text != "" {
		row("fly releases", "%s", text)
	}
	for _, wt := range snap.WaitingOnRuns {
		if wt.Combined {
			row("carried", "%s/%s: moved by run %d's recreate (migration %d, %s), which carries this run's image",
				wt.App, wt.MachineID, wt.OtherRun, wt.OtherMigration, wt.OtherState)
			continue
		}
		row("waits for", "%s/%s: run %d is moving it (migration %d, %s); one machine, one migration at a time",
			wt.App, wt.MachineID, wt.OtherRun, wt.OtherMigration, wt.OtherState)
	}
	_ = tw.Flush()
	if len(snap.InFlight) == 0 {
		fmt.Fprintln(w, "in flight: none")
		return
	}
	fmt.Fprintf(w, "in flight (%d):\n", len(snap.InFlight))
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  APP\tMACHINE\tREGION\tSTATE\tWAITED\tDEADLINE IN\tACTIVE AGENTS\tGATEWAY\tDRAIN\tRULE\tSIGNALS")
	for _, v := range snap.InFlight {
		waited, deadline, agents, gw, kind, rule := "-", "-", "-", "-", "-", "-"
		state := v.State
		switch {
		case v.Canary && v.WokeFrom != "":
			state += store.MigrationState(" (canary, woken from " + v.WokeFrom + ")")
		case v.Canary:
			state += " (canary)"
		}
		if v.State == store.StateBaking {
			deadline = "bake " + short(max(v.BakeUntil.Sub(now), 0))
		}
		if d := v.Drain; d != nil {
			kind, rule = quietWord(d.Quiet), d.PolicyRule
			if v.State == store.StateDecided || v.State == store.StateDraining {
				deadline = short(max(d.DeadlineAt.Sub(now), 0)) + " (" + string(d.OnDeadline) + ")"
			}
			if !d.StartedAt.IsZero() {
				waited = drainWaited(d, now).Round(time.Second).String()
			}
			if d.LastActiveAgents != nil {
				agents = strconv.Itoa(*d.LastActiveAgents)
			}
			if d.LastGatewayState != "" {
				gw = d.LastGatewayState
			}
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.App, v.MachineID, v.Region, state, waited, deadline, agents, gw,
			kind, rule, nonEmpty(oneLine(signalChanges(v.Migration), 80), "-"))
	}
	_ = tw.Flush()
	for _, v := range snap.InFlight {
		if v.State == store.StateRollingBack && v.Error != "" {
			fmt.Fprintf(w, "  %s rolling back (%s): %s\n", v.Target(), nonEmpty(v.DecidingSignal, "?"), oneLine(v.Error, 300))
		}
	}
}

// releasesText sums up the Fly releases a run recorded: how many apps got
// one (and their status), and why the others did not ("" when none was
// tried).
func releasesText(rels []store.RunRelease) string {
	if len(rels) == 0 {
		return ""
	}
	by := map[string]int{}
	unavailable := ""
	for _, r := range rels {
		key := r.State
		if r.State == store.ReleaseFinished {
			key = r.Status
		}
		by[key]++
		if r.State == store.ReleaseUnavailable && unavailable == "" {
			unavailable = oneLine(r.Error, 160)
		}
	}
	var parts []string
	for _, k := range []string{store.ReleaseCreated, "complete", "failed", "interrupted", store.ReleaseClaimed, store.ReleaseError, store.ReleaseUnavailable} {
		if n := by[k]; n > 0 {
			word := k
			switch k {
			case store.ReleaseCreated:
				word = "running"
			case store.ReleaseClaimed:
				word = "being recorded"
			case store.ReleaseError:
				word = "not recorded (error)"
			case store.ReleaseUnavailable:
				word = "not recorded: the token's scope does not cover Fly's GraphQL API (" + unavailable + ")"
			}
			parts = append(parts, fmt.Sprintf("%d %s", n, word))
		}
	}
	return fmt.Sprintf("%d %s: %s", len(rels), plural(len(rels), "app", "apps"), strings.Join(parts, ", "))
}
