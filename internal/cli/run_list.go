package cli

// run list: the runs, newest first, with their progress, optionally only
// those in one state.

import (
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/hermes-cloud/migrator/store"
)

func newRunListCmd(e *env) *cobra.Command {
	var (
		state  string
		limit  int
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "list [--state S] [--limit N]",
		Short: "List runs, newest first",
		Long: "List runs, newest first, with their progress (machines done of all).\n" +
			"--state is one of " + joinStates(runStates) + ".\n\n" + runExitCodes,
		Example: "  migrator run list\n  migrator run list --state running --json",
		Args:    checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if state != "" && !slices.Contains(runStates, store.RunState(state)) {
				return usagef("%s: --state %q: want one of %s", cmd.CommandPath(), state, joinStates(runStates))
			}
			if limit < 1 || limit > 10000 {
				return usagef("%s: --limit %d: want 1 to 10000", cmd.CommandPath(), limit)
			}
			st, closeDB, err := openRunStore(ctx, e)
			if err != nil {
				return err
			}
			defer closeDB()
			runs, err := st.Q().ListRuns(ctx, store.RunState(state), limit)
			if err != nil {
				return err
			}
			counts := make([]store.RunCounts, len(runs))
			for i, r := range runs {
				if counts[i], err = st.Q().CountRun(ctx, r.ID); err != nil {
					return err
				}
			}
			if asJSON {
				out := []runJSON{}
				for i, r := range runs {
					out = append(out, newRunJSON(r, counts[i], nil, time.Time{}))
				}
				return writeJSON(e.stdout, out)
			}
			if len(runs) == 0 {
				fmt.Fprintln(e.stderr, "no runs")
				return nil
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATE\tCAUSE\tDONE\tIMAGE\tREQUESTED BY\tCREATED\tREASON")
			for i, r := range runs {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\n", r.ID, r.State, r.Cause, counts[i].ByState[store.StateDone],
					counts[i].Total, r.Image, r.RequestedBy, stamp(r.CreatedAt), oneLine(r.Reason, 40))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "only runs in this state")
	cmd.Flags().IntVar(&limit, "limit", 20, "at most this many runs")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array of runs")
	return cmd
}

// joinStates lists states as a help text or an error says them: "pending,
// running, …".
func joinStates[S ~string](states []S) string {
	out := make([]string, len(states))
	for i, s := range states {
		out[i] = string(s)
	}
	return strings.Join(out, ", ")
}
