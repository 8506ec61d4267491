package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/hermes-cloud/migrator/internal/fleetcheck"
	"github.com/hermes-cloud/migrator/internal/hermes"
	"github.com/hermes-cloud/migrator/orchestrator"
)

func init() { register(newFleetCmd) }

func newFleetCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "fleet",
		Short:   "Look at the fleet's agents (readiness for drains)",
		Example: "  migrator fleet check --app-prefix hermes-agent-",
		Args:    checkArgs(cobra.NoArgs),
		RunE:    func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newFleetCheckCmd(e))
	return cmd
}

type fleetCheckFlags struct {
	selectorFlags
	asJSON bool
}

type fleetCheckJSON struct {
	Ready  bool               `json:"ready"`
	Agents []fleetcheck.Agent `json:"agents"`
	Counts map[string]int     `json:"counts"`
	// Releases says whether the token may use Fly's GraphQL API, where
	// runs record a Fly release per app (fleet_releases.go).
	Releases releasesCheckJSON `json:"releases"`
}

func newFleetCheckCmd(e *env) *cobra.Command {
	var f fleetCheckFlags
	cmd := &cobra.Command{
		Use:   "check [selector] [--json]",
		Short: "Report which agents can be drained, without changing anything",
		Long: `Report, for every selected machine, its app, id, state, region, image, the Hermes
version from GET /api/status, and whether migrator can drain its agent. That is
found without side effects: a drain POST with the agent's derived secret (from
` + drainKeyEnv + `) and an unknown action, which the gateway authenticates first and
then refuses with 400. So:

  ready           400: drain endpoint and secret good
  no_secret       401: no drain secret, or another one (secret sync, then a recreate)
  no_drain_route  404: a Hermes without the drain endpoint (move it with --undrainable recreate)
  no_secret_or_drain_route
                  401 from a gated dashboard's login gate, before routing: an older Hermes
                  without the drain route or no drain secret, when the /api/status version
                  cannot tell (the drain route's minimum is 0.18.0, or $` + minDrainVersionEnv + `)
  forbidden       403: a token of another scope
  host_rejected   400 Invalid Host header: the dashboard is bound to another hostname than
                  ` + gatewayURLEnv + ` names (not a drain route answering)
  server_error    5xx, after retries
  unreachable     no answer from the dashboard
  unexpected      any other answer
  not_running     the machine is not started: nothing to drain, not counted against readiness

A last line says whether the token may use Fly's GraphQL API (one read of the first app's
releases), where each run records a Fly release per app it moves (fly releases, and the
image fly scale count clones); a token it refuses moves machines all the same, without.

The LACKS column lists the Hermes features the agent's version lacks (the table
of docs/behaviour.md, "Hermes by feature"; $` + hermesFeaturesEnv + ` overrides it), and
a section after the summary says what each means for a run: a quiet drain recorded
loud, no rollback onto that Hermes, cron work unseen. They do not make an agent
"not ready".

The selector is run create's. Machines are listed through the Fly API
(` + flyTokenEnv + `, paced to Fly's rate limits); at most 16 agents are probed at once.
Nothing is written anywhere (no database needed). A summary line per category
follows the table on stdout; --json prints one object instead.

Exit status: 0 every selected agent is ready (or not running); 1 some are not,
or Fly could not be read; 2 usage or configuration error.`,
		Example: `  migrator fleet check --app-prefix hermes-agent-
  migrator fleet check --label hermes_auto_update=true --json | jq '.agents[] | select(.readiness != "ready")'`,
		Args: checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return fleetCheck(cmd, e, f) },
	}
	f.selectorFlags.add(cmd.Flags(), "check")
	cmd.Flags().BoolVar(&f.asJSON, "json", false, "print the report as a JSON object")
	return cmd
}

// lacksText is an agent's lacking features for a table cell ("-": none).
func lacksText(lacks []hermes.Feature) string {
	if len(lacks) == 0 {
		return "-"
	}
	names := make([]string, len(lacks))
	for i, f := range lacks {
		names[i] = string(f)
	}
	return strings.Join(names, ",")
}

// writeLacking says, for each Hermes feature some agents lack, how many,
// what such a Hermes does and what migrator does about it.
func writeLacking(w io.Writer, agents []fleetcheck.Agent, t hermes.Table) {
	counts := map[hermes.Feature]int{}
	for _, a := range agents {
		for _, f := range a.Lacks {
			counts[f]++
		}
	}
	if len(counts) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Hermes features lacking (docs/behaviour.md, Hermes by feature):")
	for _, in := range hermes.Features() {
		if n := counts[in.Feature]; n > 0 {
			fmt.Fprintf(w, "  %-15s %5d  below %s: %s; migrator: %s\n", in.Feature, n, t.Min(in.Feature), in.Older, in.Migrator)
		}
	}
}

func fleetCheck(cmd *cobra.Command, e *env, f fleetCheckFlags) error {
	ctx := cmd.Context()
	sel, err := f.selector(cmd, e)
	if err != nil {
		return err
	}
	c, err := loadComponents(ctx, e, needs{fleet: true, gateway: true, noStore: true}, cliLogger(e))
	if err != nil {
		return err
	}
	defer c.close()
	machines, err := orchestrator.SelectMachines(ctx, c.fly, sel)
	var only *orchestrator.ExcludedOnlyError
	if errors.As(err, &only) {
		return fmt.Errorf("fleet check: the selector (%s) %s", describeSelector(sel), strings.TrimPrefix(err.Error(), "selector "))
	}
	if errors.Is(err, orchestrator.ErrNothingSelected) {
		return fmt.Errorf("fleet check: the selector (%s) matched no machines", describeSelector(sel))
	}
	if err != nil {
		return fmt.Errorf("fleet check: %s", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	rep, err := fleetcheck.Check(ctx, fleetcheck.Config{Logger: c.log, MinDrainVersion: c.minDrainVersion, Features: c.hermes}, c.gw, machines)
	if err != nil {
		return fmt.Errorf("fleet check: %w", err)
	}
	rel := checkReleases(ctx, c.fly, machines)
	notReady := 0
	for _, a := range rep.Agents {
		if !a.Ready() {
			notReady++
		}
	}
	if f.asJSON {
		out := fleetCheckJSON{Ready: rep.Ready(), Agents: rep.Agents, Counts: map[string]int{}, Releases: rel}
		for k, v := range rep.Counts {
			out.Counts[string(k)] = v
		}
		if err := writeJSON(e.stdout, out); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "APP\tMACHINE\tSTATE\tREGION\tIMAGE\tVERSION\tREADINESS\tLACKS\tDETAIL")
		for _, a := range rep.Agents {
			version, detail := oneLine(a.Version, 40), oneLine(a.Detail, 140)
			if version == "" {
				version = "-"
			}
			if detail == "" {
				detail = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.App, a.MachineID, a.State, a.Region, a.Image, version, a.Readiness,
				lacksText(a.Lacks), detail)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(e.stdout)
		width := 15
		for _, cat := range rep.Categories() {
			width = max(width, len(cat))
		}
		for _, cat := range rep.Categories() {
			fmt.Fprintf(e.stdout, "%-*s %5d  %s\n", width, cat, rep.Counts[cat], fleetcheck.Explain(cat))
		}
		writeLacking(e.stdout, rep.Agents, c.hermes)
		fmt.Fprintf(e.stdout, "\nfly releases: %s\n", rel.text())
	}
	if notReady > 0 {
		return fmt.Errorf("fleet check: %d of %d %s not ready", notReady, len(rep.Agents), plural(len(rep.Agents), "agent", "agents"))
	}
	fmt.Fprintf(e.stderr, "fleet check: all %d %s ready\n", len(rep.Agents), plural(len(rep.Agents), "agent", "agents"))
	return nil
}
