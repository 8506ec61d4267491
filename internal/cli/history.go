package cli

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/printsafe"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

func init() { register(newHistoryCmd) }

type historyFlags struct {
	app, machine, cause, run string
	since, until, outcome    string
	quiet, loud, forced      bool
	busyDeferred             bool
	undrainable              bool
	format                   string
	limit                    int
}

var machineOutcomes = store.MachineOutcomes

func newHistoryCmd(e *env) *cobra.Command {
	var f historyFlags
	cmd := &cobra.Command{
		Use:   "history [filters] [--format table|json|csv]",
		Short: "Audit drains: one row per machine migration, newest first (the drain_history view)",
		Long: `Query the drain_history view: one row per machine migration with its run's
cause and requester, the policy decision (quiet, rule), the gateway's echo of
the suppression flag, how the drain ended (quiesced, deadline_forced with the
active agents at the recreate, gateway_down, deferred, cancelled, or
undrainable: moved without a drain, the drain endpoint's status in the error)
and the outcome. Newest first; filters combine with AND and are served by indexes, so
they stay fast at millions of rows.

--since and --until take a duration back from now (24h, 90m, 7d) or a date or
time (2026-03-08, 2026-03-08T07:30:00Z; a date or time without a zone is UTC);
they bound when the machine migration was created. --outcome is one of
` + strings.Join(machineOutcomes, ", ") + `. --quiet and --loud keep
drains begun quiet or loud (machines never drained are neither,
whatever the policy decided).
--busy-deferred keeps machines put off because their agent was never idle
within the policy's idle_wait: never drained, their error says how many
status reads were made and the last active_agents.

json and csv also carry the idle-first columns: idle_wait_seconds (first
status read before the drain → its begin; NULL when the drain began at
once), peeks (status reads before the begin) and active_agents_at_begin;
and the agent's own signals: signals_before (what /api/status showed
before the drain: gateway state, version, Nous session, each platform's
state and error_code), signals_after (after the recreate: the read that
decided, or the last of a canary's bake), deciding_signal (what decided a
rollback or failure: platform_parked, platform_not_up,
nous_session_terminal, fly_exit, fly_oom_killed, gateway_not_running,
gateway_startup_failed, flyd_revert, verify_timeout, …), canary and
bake_seconds. The table shows DECIDED BY and what the signals changed.

Formats: table (people), json (an array of objects keyed by the view's
columns), csv (a header row with those columns, times in RFC 3339 UTC).

Exit status: 0 ok (also when nothing matches); 1 the query failed; 2 a bad
filter value or an unknown --run.`,
		Example: `  migrator history --app hermes-agent-7
  migrator history --since 24h --forced
  migrator history --cause auto-update --busy-deferred --since 7d
  migrator history --undrainable --since 7d        # every agent moved without a drain
  migrator history --cause auto-update --loud --since 2026-03-01 --until 2026-03-08
  migrator history --run 42 --outcome rolled_back --format json
  migrator history --since 30d --limit 0 --format csv > drains.csv`,
		Args: checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return runHistory(cmd, e, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.app, "app", "", "only this Fly app")
	fl.StringVar(&f.machine, "machine", "", "only this machine id")
	fl.StringVar(&f.cause, "cause", "", "only runs of this cause: "+causeNames())
	fl.StringVar(&f.run, "run", "", "only this run id")
	fl.StringVar(&f.since, "since", "", "created at or after: a duration back from now (24h, 7d) or a date/time")
	fl.StringVar(&f.until, "until", "", "created before: a duration back from now or a date/time")
	fl.BoolVar(&f.quiet, "quiet", false, "only quiet drains (no home-channel broadcast)")
	fl.BoolVar(&f.loud, "loud", false, "only loud drains (the gateway announced the restart)")
	fl.StringVar(&f.outcome, "outcome", "", "only this outcome: "+strings.Join(machineOutcomes, ", "))
	fl.BoolVar(&f.forced, "forced", false, "only drains whose deadline forced the update with agents still active")
	fl.BoolVar(&f.busyDeferred, "busy-deferred", false, "only machines deferred because the agent was never idle (never drained)")
	fl.BoolVar(&f.undrainable, "undrainable", false, "only agents moved without a drain (drain endpoint 404/401, undrainable = recreate)")
	fl.StringVar(&f.format, "format", "table", "table, json or csv")
	fl.IntVar(&f.limit, "limit", 100, "at most this many rows; 0 for all")
	return cmd
}

// filter validates the flags into a store filter.
func (f historyFlags) filter(cmd *cobra.Command) (store.HistoryFilter, error) {
	path := cmd.CommandPath()
	hf := store.HistoryFilter{App: strings.TrimSpace(f.app), MachineID: strings.TrimSpace(f.machine), Forced: f.forced,
		BusyDeferred: f.busyDeferred, Undrainable: f.undrainable, Limit: f.limit}
	if f.cause != "" {
		c, err := policy.ParseCause(f.cause)
		if err != nil {
			return hf, usagef("%s: --cause: %v", path, err)
		}
		hf.Cause = string(c)
	}
	if f.run != "" {
		id, err := strconv.ParseInt(strings.TrimSpace(f.run), 10, 64)
		if err != nil || id <= 0 {
			return hf, usagef("%s: --run %q: want a positive whole number, e.g. 42", path, f.run)
		}
		hf.RunID = id
	}
	if f.outcome != "" {
		if !slices.Contains(machineOutcomes, f.outcome) {
			return hf, usagef("%s: --outcome %q: want one of %s", path, f.outcome, strings.Join(machineOutcomes, ", "))
		}
		hf.Outcome = f.outcome
	}
	switch {
	case f.quiet && f.loud:
		return hf, usagef("%s: --quiet and --loud exclude each other", path)
	case f.quiet:
		q := true
		hf.Quiet = &q
	case f.loud:
		q := false
		hf.Quiet = &q
	}
	var err error
	if hf.SinceAgo, hf.Since, err = parseWhen(f.since); err != nil {
		return hf, usagef("%s: --since: %v", path, err)
	}
	if hf.UntilAgo, hf.Until, err = parseWhen(f.until); err != nil {
		return hf, usagef("%s: --until: %v", path, err)
	}
	if !hf.Since.IsZero() && !hf.Until.IsZero() && !hf.Until.After(hf.Since) {
		return hf, usagef("%s: --until %s is not after --since %s", path, f.until, f.since)
	}
	if hf.SinceAgo > 0 && hf.UntilAgo > 0 && hf.UntilAgo >= hf.SinceAgo {
		return hf, usagef("%s: --until %s is not after --since %s", path, f.until, f.since)
	}
	if f.limit < 0 {
		return hf, usagef("%s: --limit %d: want 0 (all) or more", path, f.limit)
	}
	switch f.format {
	case "table", "json", "csv":
	default:
		return hf, usagef("%s: --format %q: want table, json or csv", path, f.format)
	}
	return hf, nil
}

// parseWhen reads a --since/--until value (store.ParseWhen: the web view's
// history search reads the same).
func parseWhen(s string) (time.Duration, time.Time, error) { return store.ParseWhen(s) }

func runHistory(cmd *cobra.Command, e *env, f historyFlags) error {
	ctx := cmd.Context()
	hf, err := f.filter(cmd)
	if err != nil {
		return err
	}
	st, closeDB, err := openRunStore(ctx, e)
	if err != nil {
		return err
	}
	defer closeDB()
	if hf.RunID != 0 {
		if _, err := getRun(ctx, st, hf.RunID); err != nil {
			return err
		}
	}
	bw := bufio.NewWriter(e.stdout)
	var out historyWriter
	switch f.format {
	case "json":
		out = &historyJSON{w: bw}
	case "csv":
		out = &historyCSV{w: csv.NewWriter(bw)}
	default:
		out = &historyTable{w: tabwriter.NewWriter(bw, 0, 0, 2, ' ', 0)}
	}
	if err := out.begin(); err != nil {
		return err
	}
	n := 0
	err = st.Q().History(ctx, hf, func(r store.HistoryRow) error {
		n++
		return out.row(r)
	})
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	if err := out.end(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	switch {
	case n == 0 && f.format == "table":
		fmt.Fprintln(e.stderr, "no machine migrations match")
	case n == hf.Limit && f.format == "table":
		fmt.Fprintf(e.stderr, "the newest %d shown; --limit N for more, --limit 0 for all\n", n)
	}
	return nil
}

type historyWriter interface {
	begin() error
	row(store.HistoryRow) error
	end() error
}

// ---- table ----

type historyTable struct{ w *tabwriter.Writer }

func (t *historyTable) begin() error {
	_, err := fmt.Fprintln(t.w, "CREATED\tRUN\tCAUSE\tAPP\tMACHINE\tSTATE\tOUTCOME\tDRAIN\tQUIET\tWAITED\tAGENTS\tDIGEST FROM → TO\tCHANGE\tRULE\tDECIDED BY\tSIGNALS\tERROR")
	return err
}

func (t *historyTable) row(r store.HistoryRow) error {
	quiet := "-"
	if r.Quiet != nil && r.DrainStartedAt != nil { // as --quiet and --loud: only drains begun
		quiet = yesNo(*r.Quiet)
	}
	waited := "-"
	if r.DrainStartedAt != nil {
		for _, end := range []*time.Time{r.QuiescedAt, r.DeadlineAt, r.RecreatedAt} {
			if end != nil {
				waited = short(end.Sub(*r.DrainStartedAt))
				break
			}
		}
	}
	outcome := strOr(r.Outcome, notDoneText(r))
	if r.Canary {
		outcome += " (canary"
		if r.BakeSeconds != nil {
			outcome += ", baked " + short(time.Duration(*r.BakeSeconds*float64(time.Second)))
		}
		outcome += ")"
	}
	_, err := fmt.Fprintf(t.w, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", stamp(r.CreatedAt), r.RunID, r.Cause, r.App,
		r.MachineID, strOr(r.MachineState, "-"), outcome, strOr(r.DrainOutcome, "-"), quiet, waited,
		intOr(r.ActiveAgentsAtRecreate, "-"), digests(r), changeColumn(r), strOr(r.PolicyRule, "-"), strOr(r.DecidingSignal, "-"),
		nonEmpty(oneLine(gateway.Changes(gateway.DecodeSignals(r.SignalsBefore), gateway.DecodeSignals(r.SignalsAfter)), 70), "-"),
		oneLine(strOr(r.Error, ""), 60))
	return err
}

// digests is the DIGEST column: what ran before the update and after it
// (the verified instance's, or after a rollback what runs again), each as
// the first 12 hex digits; the full ones are in --format json/csv.
func digests(r store.HistoryRow) string {
	short := func(p *string) string {
		if p == nil {
			return "-"
		}
		d := strings.TrimPrefix(*p, "sha256:")
		return d[:min(12, len(d))]
	}
	if r.FromDigest == nil && r.ToDigest == nil {
		return "-"
	}
	return short(r.FromDigest) + " → " + short(r.ToDigest)
}

// changeColumn is the CHANGE column, names only: "image", "env +A -B",
// "secrets ≥7 (sent 7)", "restart", "with run 12" (the recreate of run 12
// carried this migration); "-" for none of those.
func changeColumn(r store.HistoryRow) string {
	var parts []string
	if r.CombinedWithRun != nil {
		parts = append(parts, fmt.Sprintf("with run %d", *r.CombinedWithRun))
	}
	if len(r.EnvSet) > 0 || len(r.EnvUnset) > 0 {
		env := "env"
		for _, k := range r.EnvSet {
			env += " +" + k
		}
		for _, k := range r.EnvUnset {
			env += " -" + k
		}
		parts = append(parts, env)
	}
	if r.SecretsVersion != nil {
		s := fmt.Sprintf("secrets ≥%d", *r.SecretsVersion)
		if r.SecretsVersionSent != nil {
			s += fmt.Sprintf(" (sent %d)", *r.SecretsVersionSent)
		}
		parts = append(parts, s)
	}
	if r.Restart {
		parts = append(parts, "restart")
	}
	if len(parts) == 0 {
		return "-"
	}
	return oneLine(strings.Join(parts, ", "), 60)
}

func (t *historyTable) end() error { return t.w.Flush() }

func strOr(p *string, def string) string {
	if p == nil {
		return def
	}
	return *p
}

// ---- json: one array, streamed ----

type historyJSON struct {
	w io.Writer
	n int
}

func (j *historyJSON) begin() error { _, err := io.WriteString(j.w, "["); return err }

func (j *historyJSON) row(r store.HistoryRow) error {
	b, err := json.Marshal(utcRow(r))
	if err != nil {
		return err
	}
	sep := ",\n  "
	if j.n == 0 {
		sep = "\n  "
	}
	j.n++
	_, err = io.WriteString(j.w, sep+string(b))
	return err
}

func (j *historyJSON) end() error {
	end := "\n]\n"
	if j.n == 0 {
		end = "]\n"
	}
	_, err := io.WriteString(j.w, end)
	return err
}

// utcRow puts every time of r in UTC, so the output does not depend on the
// reader's time zone.
func utcRow(r store.HistoryRow) store.HistoryRow {
	for _, p := range []**time.Time{&r.DrainStartedAt, &r.QuiescedAt, &r.DeadlineAt, &r.RecreatedAt, &r.DrainDeadline, &r.FinishedAt} {
		if *p != nil {
			t := (*p).UTC()
			*p = &t
		}
	}
	r.CreatedAt = r.CreatedAt.UTC()
	return r
}

// ---- csv ----

type historyCSV struct{ w *csv.Writer }

func (c *historyCSV) begin() error { return c.w.Write(store.HistoryColumns) }

// row writes r with every cell neutralised for spreadsheets
// (printsafe.CSVCell: a platform name or error an agent chose may start
// with "=").
func (c *historyCSV) row(r store.HistoryRow) error {
	return c.w.Write(printsafe.CSVRecord(r.CSVRecord()))
}

func (c *historyCSV) end() error {
	c.w.Flush()
	return c.w.Error()
}

// notDoneText is the OUTCOME of a machine migration that has none yet: not
// started (still pending: never leased, peeked or drained), waiting for its
// agent to be idle, or in flight.
func notDoneText(r store.HistoryRow) string {
	switch {
	case r.DrainStartedAt != nil || r.RecreatedAt != nil || r.MachineState != nil:
		return "(in flight)"
	case r.Peeks > 0:
		return "(waiting for idle)"
	}
	return "(not started)"
}
