package cli

// run pause, run resume and run cancel: a person's change of a run's
// state, recorded with who asked; a run in a state that refuses the change
// is one clear line (exit 1).

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/store"
)

func newRunStateCmd(e *env, verb string) *cobra.Command {
	var short, long, example string
	switch verb {
	case "cancel":
		short = "Cancel a run: nothing new starts; drains not yet followed by an update are cancelled"
		long = "Cancel a run (pending, running or paused). Machines that have not started end\n" +
			"cancelled at once; machines draining get their drain cancelled at their next step, so\n" +
			"their agents take turns again; machines mid-update finish and are verified. The run\n" +
			"is cancelling until those are done, then cancelled."
		example = "  migrator run cancel 42\n  migrator run cancel 42 --json | jq -r .state   # cancelling, then cancelled"
	case "pause":
		short = "Pause a running run: no machine starts; machines in flight finish"
		long = "Pause a running run: no machine starts until `migrator run resume`; machines already\n" +
			"on their path finish it."
		example = "  migrator run pause 42\n  migrator run pause 42 --json | jq .counts.by_state"
	case "resume":
		short = "Resume a paused run (paused by a person, a failed canary or the failure threshold)"
		long = "Resume a paused run: machines start again within the budget. A run paused because a\n" +
			"canary failed (in verify or in its bake) or failures passed the threshold resumes too:\n" +
			"what failed so far counts as seen, so the rest follow without another canary bake and\n" +
			"the threshold counts afresh. --bake asks for another bake first: the next machines in\n" +
			"plan order (as many as the run's --canary) become canaries, move and bake before the\n" +
			"rest. Look at `migrator history --run ID --outcome rolled_back` first."
		example = "  migrator run resume 42\n  migrator run resume 42 --bake   # new canaries, baked, before the rest\n  migrator run resume 42 --json"
	}
	var asJSON, bake bool
	cmd := &cobra.Command{
		Use:   verb + " ID",
		Short: short,
		Long: long + "\n\nA run in a state that refuses the change is an error (exit 1). With --json, stdout\n" +
			"is the run after the change as `migrator run status --json` prints it, and the\n" +
			"sentence goes to stderr.\n\n" + runExitCodes,
		Example: example,
		Args:    checkArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			id, err := parseRunID(cmd, args[0])
			if err != nil {
				return err
			}
			log := cliLogger(e)
			c, err := loadComponents(ctx, e, needs{}, log)
			if err != nil {
				return err
			}
			defer c.close()
			if err := requireCurrentSchema(ctx, c.store); err != nil {
				return err
			}
			before, err := getRun(ctx, c.store, id)
			if err != nil {
				return err
			}
			if bake && before.Canary == 0 {
				return usagef("%s: --bake: run %d has no canaries (created without --canary): nothing to bake", cmd.CommandPath(), id)
			}
			if _, err := c.orch.NewRiverClient(orchestrator.RiverOptions{Logger: log}); err != nil {
				return fmt.Errorf("run %s: %w", verb, err)
			}
			by := principal(e)
			var r store.Run
			switch verb {
			case "cancel":
				r, err = c.orch.Cancel(ctx, id, by)
			case "pause":
				r, err = c.orch.Pause(ctx, id, by)
			case "resume":
				var picked int
				r, picked, err = c.orch.ResumeRun(ctx, id, by, bake)
				if err == nil && bake {
					if picked == 0 {
						fmt.Fprintf(e.stderr, "run %d: no machine left to make a canary (--bake): the rest follow as they are\n", id)
					} else {
						fmt.Fprintf(e.stderr, "run %d: %d new %s, baked before the rest follow\n", id, picked, plural(picked, "canary", "canaries"))
					}
				}
			}
			if errors.Is(err, store.ErrConflict) {
				return refusedChange(ctx, c.store, verb, before)
			}
			if err != nil {
				return fmt.Errorf("run %s %d: %w", verb, id, err)
			}
			if !asJSON {
				return printStateChange(ctx, e.stdout, c.store, verb, r)
			}
			if err := printStateChange(ctx, e.stderr, c.store, verb, r); err != nil {
				return err
			}
			// Read back as run status does, so the object is the same one.
			snap, err := c.store.Snapshot(ctx, id)
			if err != nil {
				return fmt.Errorf("run %s %d: done, but reading the run back: %w", verb, id, err)
			}
			return writeJSON(e.stdout, newRunJSON(snap.Run, snap.Counts, snap.InFlight, c.clock.Now()))
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the run after the change as a JSON object, as run status --json does")
	if verb == "resume" {
		cmd.Flags().BoolVar(&bake, "bake", false, "move and bake new canaries (the run's canary count) before the rest follow")
	}
	return cmd
}

// refusedChange says, on one line, why a run's state refused verb.
func refusedChange(ctx context.Context, st *store.Store, verb string, before store.Run) error {
	r, err := st.Q().GetRun(ctx, before.ID)
	if err != nil {
		r = before
	}
	want := map[string]string{
		"cancel": "only a pending, running or paused run can be cancelled",
		"pause":  "only a running run can be paused",
		"resume": "only a paused run can be resumed",
	}[verb]
	return fmt.Errorf("run %s %d: the run is %s: %s", verb, r.ID, r.State, want)
}

// printStateChange says in a sentence on w what verb did to run r.
func printStateChange(ctx context.Context, w io.Writer, st *store.Store, verb string, r store.Run) error {
	counts, err := st.Q().CountRun(ctx, r.ID)
	if err != nil {
		return err
	}
	inFlight := counts.Total - counts.ByState[store.StateDone] - counts.ByState[store.StatePending]
	switch {
	case verb == "cancel" && r.State == store.RunCancelling:
		fmt.Fprintf(w, "run %d cancelling: %d not started were cancelled; %d in flight stop at their next step (drains cancelled; updates already sent finish)\n",
			r.ID, counts.ByOutcome[store.OutcomeCancelled], inFlight)
	case verb == "pause":
		fmt.Fprintf(w, "run %d paused: no machine starts; %d in flight finish. Resume with: migrator run resume %d\n", r.ID, inFlight, r.ID)
	default:
		fmt.Fprintf(w, "run %d %s\n", r.ID, r.State)
	}
	return nil
}
