package cli

// run follow: watches a run until it ends or pauses, reading only
// Postgres: on a terminal a view redrawn twice a second (progress, counts,
// the machines in flight and those waiting for an idle moment), otherwise
// one timestamped line per change.

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/hermes-cloud/migrator/internal/printsafe"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/store"
)

const (
	// followEvery is how often follow reads the run: a live view that
	// feels live, at three cheap indexed queries per read.
	followEvery = 500 * time.Millisecond
	// followRetries is how many reads in a row may fail (the database
	// restarting, a network blip) before follow gives up.
	followRetries = 20
)

func newRunFollowCmd(e *env) *cobra.Command {
	var opts followOptions
	cmd := &cobra.Command{
		Use:   "follow ID",
		Short: "Watch a run live until it ends (or pauses)",
		Long: `Watch a run until it ends. On a terminal: a view redrawn twice a second with a
progress bar, the machines counted by state and by outcome, the ETA (from the
completion rate so far), and the machines in flight, draining ones with how long
they have waited and the gateway's last active_agents; then, apart, the machines
waiting for an idle moment of their agent (busy when looked at, so not drained
yet and holding no budget slot) with how long and how often they were looked at
and when their wait ends (then they are drained, or deferred if the policy says
so; from this process's policy, as serve's idle step decides it). Otherwise (a pipe, a
file, --plain): one timestamped line whenever something changes.

A run paused (by a person, a failed canary or the failure threshold) waits for
a person, so follow stops there too, at once if the run is paused already: it
says why on stderr with the commands that resume or cancel the run, and exits 1.
--keep-watching watches a paused run on instead (its machines in flight finish;
a resume or cancel shows) until it ends.

follow only reads Postgres; ` + "`migrator serve`" + ` does the work, and Ctrl-C stops
following, not the run. Times of drains are on the fleet's clock.

Exit status: 0 when the run succeeded; 1 when it ended failed or cancelled, is
paused (without --keep-watching), or following was interrupted; 2 for a
malformed or unknown run id.`,
		Example: "  migrator run follow 42\n  migrator run follow 42 --plain | tee run-42.log\n" +
			"  migrator run follow 42 || migrator run status 42   # ended badly or paused: see why\n" +
			"  migrator run follow 42 --keep-watching             # a paused run: watch its drains finish",
		Args: checkArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			id, err := parseRunID(cmd, args[0])
			if err != nil {
				return err
			}
			st, closeDB, err := openRunStore(ctx, e)
			if err != nil {
				return err
			}
			defer closeDB()
			if _, err := getRun(ctx, st, id); err != nil {
				return err
			}
			return follow(ctx, e, st, id, opts)
		},
	}
	cmd.Flags().BoolVar(&opts.plain, "plain", false, "plain timestamped lines even on a terminal")
	cmd.Flags().BoolVar(&opts.keepWatching, "keep-watching", false, "do not stop when the run is paused: watch on until it ends")
	return cmd
}

// terminal returns, when w (or the writer under env's printsafe writer)
// is a terminal, a function reading its size now (it may be resized while
// the view runs).
func terminal(w io.Writer) (size func() (width, height int), ok bool) {
	f, isFile := underneath(w).(*os.File)
	if !isFile || !term.IsTerminal(int(f.Fd())) {
		return nil, false
	}
	return func() (int, int) {
		width, height, err := term.GetSize(int(f.Fd()))
		if err != nil || width <= 0 || height <= 0 {
			return 100, 30
		}
		return width, height
	}, true
}

// underneath is the writer under env's printsafe writer (cli.go): the live
// view writes its own cursor movements there, and cleans its text itself.
func underneath(w io.Writer) io.Writer {
	if u, ok := w.(interface{ Unwrap() io.Writer }); ok {
		return u.Unwrap()
	}
	return w
}

// followOptions are follow's flags.
type followOptions struct {
	plain        bool // timestamped lines even on a terminal
	keepWatching bool // watch a paused run on instead of stopping
}

// followRun watches run id until it ends or pauses (run create --follow,
// the sandbox); see newRunFollowCmd.
func followRun(ctx context.Context, e *env, st *store.Store, id int64, plain bool) error {
	return follow(ctx, e, st, id, followOptions{plain: plain})
}

func follow(ctx context.Context, e *env, st *store.Store, id int64, opts followOptions) error {
	clk, err := loadClock(e)
	if err != nil {
		return err
	}
	var view followView
	if size, tty := terminal(e.stdout); tty && !opts.plain {
		// The policy says when each machine waiting for an idle moment
		// stops waiting (the same decision serve's idle step takes).
		pol, err := loadPolicy(e)
		if err != nil {
			return err
		}
		view = &liveView{w: underneath(e.stdout), size: size, pol: pol}
	} else {
		view = &lineView{w: e.stdout, st: st}
	}
	tick := time.NewTicker(followEvery)
	defer tick.Stop()
	failures := 0
	for {
		snap, err := st.Snapshot(ctx, id)
		switch {
		case ctx.Err() != nil:
			view.stop()
			return fmt.Errorf("stopped following run %d; the run goes on (follow it again with: migrator run follow %d)", id, id)
		case err != nil:
			if failures++; failures >= followRetries {
				view.stop()
				return fmt.Errorf("follow run %d: %w", id, err)
			}
		default:
			failures = 0
			if err := view.show(ctx, snap, clk.Now()); err != nil {
				view.stop()
				return fmt.Errorf("follow run %d: %w", id, err)
			}
			if followOver(snap.Run.State, opts) {
				view.stop()
				fmt.Fprintln(e.stdout, runSummary(snap))
				return runEndError(snap)
			}
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

// followOver reports whether follow stops at a run in state: when it is
// over, or paused (a person has to act) unless asked to keep watching.
func followOver(state store.RunState, opts followOptions) bool {
	return store.RunTerminal(state) || state == store.RunPaused && !opts.keepWatching
}

// runEndError is follow's verdict: nil for a run that succeeded. For a
// paused run it says why and how to go on, as one line.
func runEndError(s store.RunSnapshot) error {
	r := s.Run
	switch r.State {
	case store.RunSucceeded:
		return nil
	case store.RunCancelled:
		return fmt.Errorf("run %d was cancelled (%s)", r.ID, r.StateReason)
	case store.RunPaused:
		msg := fmt.Sprintf("run %d paused", r.ID)
		if reason := oneLine(r.StateReason, 200); reason != "" {
			msg += ": " + reason
		}
		c := s.Counts
		if n := c.Total - c.ByState[store.StateDone] - c.ByState[store.StatePending]; n > 0 {
			msg += fmt.Sprintf("; %d %s in flight %s", n, plural(n, "machine", "machines"), plural(n, "finishes", "finish"))
		}
		return fmt.Errorf("%s; resume with: migrator run resume %d (or cancel: migrator run cancel %d)", msg, r.ID, r.ID)
	default:
		return fmt.Errorf("run %d %s: %s (see `migrator history --run %d`)", r.ID, r.State, r.StateReason, r.ID)
	}
}

// runSummary is the last line of a followed run.
func runSummary(s store.RunSnapshot) string {
	r := s.Run
	took := ""
	if !r.FinishedAt.IsZero() && !r.StartedAt.IsZero() {
		took = " in " + r.FinishedAt.Sub(r.StartedAt).Round(time.Second).String()
	}
	outcomes := countList(s.Counts.ByOutcome, outcomeOrder)
	if outcomes == "none" { // a run paused before any machine was done
		outcomes = "no machine done yet"
	}
	return fmt.Sprintf("run %d %s%s: %s", r.ID, r.State, took, outcomes)
}

type followView interface {
	show(ctx context.Context, s store.RunSnapshot, now time.Time) error
	stop()
}

// ---- progress arithmetic (pure) ----

// progress is how far a run is: machines done of all, and the ETA from the
// completion rate so far. Machines skipped at planning are not work, so
// they count neither for the rate nor for what remains.
type progress struct {
	done, total int
	elapsed     time.Duration
	eta         time.Duration // valid when etaKnown
	etaKnown    bool
}

func runProgress(s store.RunSnapshot) progress {
	c := s.Counts
	p := progress{done: c.ByState[store.StateDone], total: c.Total}
	if s.Run.StartedAt.IsZero() {
		return p
	}
	end := s.DBNow
	if !s.Run.FinishedAt.IsZero() {
		end = s.Run.FinishedAt
	}
	p.elapsed = max(end.Sub(s.Run.StartedAt), 0)
	skipped := c.ByOutcome[store.OutcomeSkippedUpToDate]
	work, worked := c.Total-skipped, p.done-skipped
	if worked > 0 && p.elapsed > 0 && s.Run.State != store.RunPaused {
		remaining := work - worked
		p.eta = time.Duration(float64(p.elapsed) * float64(remaining) / float64(worked))
		p.etaKnown = true
	}
	return p
}

func (p progress) percent() int {
	if p.total == 0 {
		return 100
	}
	return p.done * 100 / p.total
}

// bar draws a progress bar n cells wide.
func (p progress) bar(n int) string {
	full := n
	if p.total > 0 {
		full = p.done * n / p.total
	}
	return "[" + strings.Repeat("█", full) + strings.Repeat("░", n-full) + "]"
}

// short formats a duration for people: 4m05s, 1h02m, 12s.
func short(d time.Duration) string {
	d = d.Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	default:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
}

// ---- the live view (a terminal) ----

type liveView struct {
	w       io.Writer
	size    func() (width, height int)
	pol     orchestrator.Policy
	lines   int // lines of the frame on screen
	started bool
}

func (v *liveView) show(_ context.Context, s store.RunSnapshot, now time.Time) error {
	width, height := v.size()
	// One line short of the screen: moving up past its top is impossible,
	// so a taller frame could not be redrawn in place.
	frame := renderFrame(s, v.pol, now, width, max(height-1, 6))
	var b strings.Builder
	if !v.started {
		b.WriteString("\x1b[?25l") // hide the cursor while redrawing
		v.started = true
	}
	if v.lines > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", v.lines) // back to the frame's first line
	}
	b.WriteString("\r\x1b[J") // and clear from there down
	for _, l := range frame {
		// The view writes under the printsafe writer: the frame's text
		// (app names, reasons, errors) is cleaned here, one line each, so
		// only the sequences above move the cursor.
		b.WriteString(frameLine(l))
		b.WriteByte('\n')
	}
	v.lines = len(frame)
	_, err := io.WriteString(v.w, b.String())
	return err
}

func (v *liveView) stop() {
	if v.started {
		_, _ = io.WriteString(v.w, "\x1b[?25h")
	}
}

// changeShort is what a run moves its machines to, for one line: its
// image, or the whole change (names only) when it does more.
func changeShort(r store.Run) string {
	if ch := orchestrator.RunChange(r); ch.BeyondImage() || r.Image == "" {
		return ch.String()
	}
	return r.Image
}

// renderFrame draws the live view: at most maxLines lines, each cut to
// width columns so the terminal never wraps one (the redraw counts lines).
// pol tells when a machine waiting for an idle moment stops waiting.
func renderFrame(s store.RunSnapshot, pol orchestrator.Policy, now time.Time, width, maxLines int) []string {
	r, c := s.Run, s.Counts
	p := runProgress(s)
	var out []string
	add := func(format string, args ...any) { out = append(out, clip(fmt.Sprintf(format, args...), width)) }

	state := string(r.State)
	if r.StateReason != "" && r.State != store.RunRunning {
		state += ": " + r.StateReason
	}
	add("run %d · %s → %s · %s", r.ID, r.Cause, changeShort(r), state)
	eta := "ETA —"
	switch {
	case store.RunTerminal(r.State):
		eta = "done"
	case r.State == store.RunPaused:
		eta = "ETA — (paused)"
	case p.etaKnown:
		eta = "ETA ~" + short(p.eta)
	}
	barWidth := min(max(width-50, 10), 40)
	add("%s %d/%d %3d%%  elapsed %s  %s", p.bar(barWidth), p.done, p.total, p.percent(), short(p.elapsed), eta)
	add("state    %s", countList(c.ByState, stateOrder))
	add("outcome  %s", countList(c.ByOutcome, outcomeOrder))
	var idle []string
	if c.WaitingForIdle > 0 {
		// Not draining and holding no slot: their agents were busy.
		idle = append(idle, clip(fmt.Sprintf("waiting for an idle moment (%d, not draining, no slot held):", c.WaitingForIdle), width))
		rows := [][]string{{"APP/MACHINE", "WAITING", "LOOKS", "ACTIVE AGENTS", "NEXT LOOK IN", "WAIT ENDS IN"}}
		for _, m := range s.WaitingForIdle {
			ends := "-" // no idle wait in its decision
			if until := orchestrator.IdleWaitEnds(pol, r, m.Migration, now); !until.IsZero() {
				ends = short(max(until.Sub(now), 0))
			}
			rows = append(rows, []string{m.App + "/" + m.MachineID, short(max(now.Sub(m.FirstPeekAt), 0)),
				strconv.Itoa(m.Peeks), intOr(m.PeekActiveAgents, "?"), short(max(m.NotBefore.Sub(now), 0)), ends})
		}
		for _, l := range alignColumns(rows) {
			idle = append(idle, clip("  "+l, width))
		}
		if more := c.WaitingForIdle - len(s.WaitingForIdle); more > 0 {
			idle = append(idle, fmt.Sprintf("  … and %d more", more))
		}
	}
	// The machines in flight come first; those waiting get the room left.
	withIdle := func(out []string) []string {
		room := max(maxLines-len(out), 0)
		return append(out, idle[:min(len(idle), room)]...)
	}
	if len(s.InFlight) == 0 {
		add("in flight: none")
		return withIdle(out)
	}
	add("in flight (%d):", len(s.InFlight))
	rows := [][]string{{"APP/MACHINE", "STATE", "WAITED", "DEADLINE IN", "ACTIVE AGENTS", "DRAIN"}}
	for _, m := range s.InFlight {
		waited, left, agents, kind := "-", "-", "-", "-"
		if d := m.Drain; d != nil {
			kind = quietWord(d.Quiet) + " " + d.PolicyRule
			if !d.StartedAt.IsZero() {
				waited = short(drainWaited(d, now))
			}
			if m.State == store.StateDraining || m.State == store.StateDecided {
				left = short(max(d.DeadlineAt.Sub(now), 0))
			}
			if m.State == store.StateBaking {
				left = "bake " + short(max(m.BakeUntil.Sub(now), 0))
			}
			if d.LastActiveAgents != nil {
				agents = strconv.Itoa(*d.LastActiveAgents)
			}
			if d.Outcome != "" {
				kind += " (" + string(d.Outcome) + ")"
			}
		}
		target := m.App + "/" + m.MachineID
		if m.Canary {
			target += " (canary)"
		}
		rows = append(rows, []string{target, string(m.State), waited, left, agents, kind})
	}
	room := max(maxLines-len(out)-min(len(idle), 3), 1)
	table := alignColumns(rows)
	if len(table) > room {
		more := len(table) - room + 1
		table = append(table[:room-1], fmt.Sprintf("… and %d more", more))
	}
	for _, l := range table {
		add("  %s", l)
	}
	return withIdle(out)
}

// alignColumns pads cells to their column's width.
func alignColumns(rows [][]string) []string {
	var widths []int
	for _, r := range rows {
		for i, c := range r {
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	out := make([]string, len(rows))
	for i, r := range rows {
		var b strings.Builder
		for j, c := range r {
			b.WriteString(c)
			if j < len(r)-1 {
				b.WriteString(strings.Repeat(" ", widths[j]-utf8.RuneCountInString(c)+2))
			}
		}
		out[i] = b.String()
	}
	return out
}

// frameLine is l without control sequences or characters, on one line
// (the redraw counts lines), its spaces kept (columns stay aligned).
func frameLine(l string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' {
			return ' '
		}
		return r
	}, printsafe.Text(l))
}

// clip cuts s to width runes.
func clip(s string, width int) string {
	if width <= 0 || utf8.RuneCountInString(s) <= width {
		return s
	}
	r := []rune(s)
	return string(r[:width-1]) + "…"
}

// ---- the line view (not a terminal) ----

// lineView prints one timestamped line per change: the run's state, a
// machine entering, moving along or leaving its path, active_agents of a
// draining machine, and outcomes that no machine line explains (pending
// machines cancelled at once).
type lineView struct {
	w    io.Writer
	st   *store.Store
	prev *store.RunSnapshot
}

func (v *lineView) stop() {}

func (v *lineView) show(ctx context.Context, s store.RunSnapshot, now time.Time) error {
	var left []store.MigrationView
	if v.prev != nil {
		var ids []int64
		for _, m := range v.prev.InFlight {
			if !slices.ContainsFunc(s.InFlight, func(n store.MigrationView) bool { return n.ID == m.ID }) {
				ids = append(ids, m.ID)
			}
		}
		var err error
		if left, err = v.st.Q().MigrationViews(ctx, ids); err != nil {
			return err
		}
	}
	for _, l := range changeLines(v.prev, s, left, now) {
		if _, err := fmt.Fprintln(v.w, l); err != nil {
			return err
		}
	}
	v.prev = &s
	return nil
}

// changeLines lists what changed from prev to cur (prev nil: the start).
// left holds, as they are now, the machines that were in flight in prev and
// are not any more. Lines are stamped with the database's clock, the one
// the run's and drain_history's times are on; drain waits use now, the
// fleet's clock that drains are timed on. Pure, for tests.
func changeLines(prev *store.RunSnapshot, cur store.RunSnapshot, left []store.MigrationView, now time.Time) []string {
	ts := cur.DBNow.UTC().Format(time.RFC3339)
	p := runProgress(cur)
	var out []string
	line := func(format string, args ...any) {
		out = append(out, fmt.Sprintf("%s [%d/%d] ", ts, p.done, p.total)+fmt.Sprintf(format, args...))
	}
	r := cur.Run
	if prev == nil {
		line("run %d %s: %s → %s; %d %s, max unavailable %d (requested by %s)", r.ID, r.State, r.Cause, changeShort(r),
			cur.Counts.Total, plural(cur.Counts.Total, "machine", "machines"), r.MaxUnavailable, r.RequestedBy)
		if n := cur.Counts.ByState[store.StateDone]; n > 0 {
			line("already done: %s", countList(cur.Counts.ByOutcome, outcomeOrder))
		}
	}

	waited := map[int64]bool{}
	if prev != nil {
		for _, wt := range prev.WaitingOnRuns {
			waited[wt.MigrationID] = true
		}
	}
	for _, wt := range cur.WaitingOnRuns {
		switch {
		case waited[wt.MigrationID]:
		case wt.Combined:
			line("%s/%s carried by run %d's recreate (migration %d, %s): its change and this run's image go in one", wt.App,
				wt.MachineID, wt.OtherRun, wt.OtherMigration, wt.OtherState)
		default:
			line("%s/%s waits for run %d (migration %d, %s): one machine, one migration at a time", wt.App, wt.MachineID,
				wt.OtherRun, wt.OtherMigration, wt.OtherState)
		}
	}

	before := map[int64]store.MigrationView{}
	if prev != nil {
		for _, m := range prev.InFlight {
			before[m.ID] = m
		}
	}
	explained := map[store.Outcome]int{}
	for _, m := range cur.InFlight {
		old, seen := before[m.ID]
		switch {
		case !seen || old.State != m.State:
			line("%s %s", m.Target(), describeStep(m, now))
		case m.State == store.StateDraining && m.Drain != nil && old.Drain != nil && !sameInt(old.Drain.LastActiveAgents, m.Drain.LastActiveAgents):
			change := intOr(m.Drain.LastActiveAgents, "?")
			if old.Drain.LastActiveAgents != nil {
				change = intOr(old.Drain.LastActiveAgents, "?") + " → " + change
			}
			line("%s draining: active_agents %s (waited %s)", m.Target(), change, short(drainWaited(m.Drain, now)))
		}
	}
	for _, m := range left {
		if m.State != store.StateDone {
			line("%s back to %s (%s)", m.Target(), m.State, nonEmpty(m.Error, "waits for a budget slot"))
			continue
		}
		explained[m.Outcome]++
		msg := fmt.Sprintf("%s %s", m.Target(), m.Outcome)
		if !m.BakeStartedAt.IsZero() && m.Outcome == store.OutcomeMigrated {
			msg += fmt.Sprintf(" after a clean bake of %s", short(m.BakeUntil.Sub(m.BakeStartedAt)))
		}
		if m.DecidingSignal != "" {
			msg += " [" + m.DecidingSignal + "]"
		}
		if d := m.Drain; d != nil && d.Outcome == store.DrainUndrainable {
			msg += fmt.Sprintf(" (no drain: HTTP %d, loud)", d.UndrainableStatus)
		} else if d != nil && d.Outcome == store.DrainNotRunning {
			msg += " (" + notRunningText(m.Migration) + ")"
		} else if d != nil && d.Outcome != "" {
			msg += fmt.Sprintf(" (drain %s after %s", d.Outcome, short(drainWaited(d, now)))
			if d.ActiveAgentsAtRecreate != nil && d.Outcome == store.DrainDeadlineForced {
				msg += fmt.Sprintf(", %d active agents", *d.ActiveAgentsAtRecreate)
			}
			msg += ")"
		}
		if m.Error != "" {
			msg += ": " + m.Error
		}
		line("%s", msg)
	}
	if w := cur.Counts.WaitingForIdle; prev == nil && w > 0 || prev != nil && prev.Counts.WaitingForIdle != w {
		if w == 0 {
			line("no machine waits for an idle moment any more")
		} else {
			line("waiting for an idle moment: %d %s (agents busy when looked at; not draining, no slot held)", w, plural(w, "machine", "machines"))
		}
	}
	// The run's own change comes after its machines' (the last machine
	// done, then the run succeeded).
	if prev != nil && prev.Run.State != r.State {
		msg := fmt.Sprintf("run %d %s", r.ID, r.State)
		if r.StateReason != "" {
			msg += ": " + r.StateReason
		}
		if r.State == store.RunPaused {
			msg += fmt.Sprintf(" (resume with: migrator run resume %d)", r.ID)
		}
		line("%s", msg)
	}
	// Outcomes that changed without a machine line: machines that went from
	// pending straight to done (cancelled before starting, skipped), or
	// were in flight only between two looks (a machine waiting for an idle
	// moment is drained and updated in one step the moment its agent is
	// idle, then verified in seconds).
	if prev != nil {
		var unstarted, brief []string
		for _, o := range outcomeOrder {
			if d := cur.Counts.ByOutcome[o] - prev.Counts.ByOutcome[o] - explained[o]; d > 0 {
				part := fmt.Sprintf("%d %s", d, o)
				if o == store.OutcomeCancelled || o == store.OutcomeSkippedUpToDate {
					unstarted = append(unstarted, part)
				} else {
					brief = append(brief, part)
				}
			}
		}
		if len(unstarted) > 0 {
			line("%s without starting", strings.Join(unstarted, ", "))
		}
		if len(brief) > 0 {
			line("%s since the last look (in flight only between two looks; `migrator history --run %d` has them)",
				strings.Join(brief, ", "), r.ID)
		}
	}
	return out
}

// describeStep says where a machine in flight is now.
func describeStep(m store.MigrationView, now time.Time) string {
	d := m.Drain
	canary := ""
	if m.Canary {
		canary = " (canary)"
	}
	switch {
	case d == nil:
		return string(m.State) + canary
	case m.State == store.StateDecided:
		return fmt.Sprintf("decided%s: %s, rule %s, deadline in %s then %s", canary, quietWord(d.Quiet), d.PolicyRule,
			short(max(d.DeadlineAt.Sub(now), 0)), d.OnDeadline)
	case m.State == store.StateDraining:
		// One parenthesis: "(canary, quiet, rule R, active_agents N)"; the
		// count only once a status read after the begin said it.
		what := quietWord(d.Quiet) + ", rule " + d.PolicyRule
		if m.Canary {
			what = "canary, " + what
		}
		if d.LastActiveAgents != nil {
			what += ", active_agents " + strconv.Itoa(*d.LastActiveAgents)
		}
		return "draining (" + what + ")"
	case m.State == store.StateUpdating && d.Outcome == store.DrainDeadlineForced:
		return fmt.Sprintf("updating: deadline forced with %s active agents after %s", intOr(d.ActiveAgentsAtRecreate, "?"), short(drainWaited(d, now)))
	case m.State == store.StateUpdating && d.Outcome == store.DrainNotRunning:
		return "updating: " + notRunningText(m.Migration)
	case m.State == store.StateUpdating && d.Outcome == store.DrainUndrainable:
		return fmt.Sprintf("updating without a drain (drain endpoint HTTP %d; undrainable = recreate, loud)", d.UndrainableStatus)
	case m.State == store.StateUpdating && d.Outcome != "":
		return fmt.Sprintf("updating: drain %s after %s", d.Outcome, short(drainWaited(d, now)))
	case m.State == store.StateRollingBack:
		sig := ""
		if m.DecidingSignal != "" {
			sig = " [" + m.DecidingSignal + "]"
		}
		return "rolling_back" + sig + ": " + nonEmpty(m.Error, "the new instance failed verification")
	case m.State == store.StateBaking:
		return fmt.Sprintf("baking%s: verified; watched for %s (Fly events, gateway, platforms and Nous session against before: %s); the rest wait",
			canary, short(max(m.BakeUntil.Sub(m.BakeStartedAt), 0)), nonEmpty(signalChanges(m.Migration), "no status read yet"))
	case m.State == store.StatePuttingDown:
		return fmt.Sprintf("putting_down%s: woken from %s to run the image (%s); put back %s", canary, m.WokeFrom,
			m.PendingOutcome, m.WokeFrom)
	default:
		return string(m.State) + canary
	}
}

// notRunningText says how a machine that was not running is moved.
func notRunningText(m store.Migration) string {
	if m.WokeFrom != "" {
		return fmt.Sprintf("no drain: a canary %s, woken by its update to run the image, put back down after", m.WokeFrom)
	}
	if m.Launch {
		// It went down during its drain; it was running when leased.
		return "no drain left: the machine went down during it; launched as decided before the drain"
	}
	return fmt.Sprintf("no drain: machine %s, left down", nonEmpty(m.MachineState, "not running"))
}

func sameInt(a, b *int) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }

func intOr(p *int, def string) string {
	if p == nil {
		return def
	}
	return strconv.Itoa(*p)
}

func nonEmpty(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
