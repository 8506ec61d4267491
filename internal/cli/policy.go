package cli

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	_ "time/tzdata" // maintenance windows name IANA zones; a minimal container has no zoneinfo

	"github.com/BurntSushi/toml"
	"github.com/spf13/cobra"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/policy"
)

func init() { register(newPolicyCmd) }

func newPolicyCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Check a drain policy file, and explain the decision it makes for a machine",
		Long: `A drain policy decides, per cause and machine, whether a drain is quiet, how
long it may wait for the agent to finish its work, whether to force or defer
at the deadline, and in which maintenance window it may start.`,
		Example: `  migrator policy check policy.toml
  migrator policy explain --cause auto-update --app acme-agent --label tier=vip --policy policy.toml`,
		Args: checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newPolicyCheckCmd(e), newPolicyExplainCmd(e))
	return cmd
}

func newPolicyCheckCmd(e *env) *cobra.Command {
	var table string
	cmd := &cobra.Command{
		Use:   "check FILE",
		Short: "Validate a policy file; print its rule count and version",
		Long: `Validate a policy file strictly: an unknown key or a bad value is reported as
FILE:LINE: message, with exit status 2. A valid file prints
"ok: N rules, version V"; V is what every decision records.`,
		Example: `  migrator policy check policy.toml
  migrator policy check --table policy migrator.toml   # the [policy] table of a config file`,
		Args: checkArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := readPolicyFile(args[0], table)
			if err != nil {
				return err
			}
			n := len(p.Rules())
			fmt.Fprintf(e.stdout, "ok: %d %s, version %s\n", n, plural(n, "rule", "rules"), p.Version())
			return nil
		},
	}
	cmd.Flags().StringVar(&table, "table", "", "read the policy from this table of FILE (e.g. policy) instead of the whole file")
	return cmd
}

type explainFlags struct {
	cause, app, machine, region, image string
	labels                             []string
	deferrals                          int
	at                                 string
	policyFile, table                  string
	json                               bool
}

func newPolicyExplainCmd(e *env) *cobra.Command {
	var f explainFlags
	cmd := &cobra.Command{
		Use:   "explain --cause C --app A [flags]",
		Short: "Show the decision the policy makes for a machine, and the rule that made it",
		Long: `Show the decision the policy makes for one machine: quiet or loud, the wait
and deadline, force or defer at the deadline, the maintenance window, the
rule that matched and why the rules before it did not.

Without --policy, the policy is the one serve uses: the file named by
MIGRATOR_POLICY, else the built-in defaults.`,
		Example: `  migrator policy explain --cause auto-update --app acme-agent
  migrator policy explain --cause auto-update --app acme-agent --label tier=vip --region iad \
      --deferrals 2 --at 2026-03-08T07:30:00Z --policy policy.toml
  migrator policy explain --cause operator --app acme-agent --json`,
		Args: checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return explain(e, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.cause, "cause", "", "why the machine moves: auto-update, image-migration, env-edit, profile-change or operator (required)")
	fl.StringVar(&f.app, "app", "", "the machine's Fly app (required)")
	fl.StringVar(&f.machine, "machine", "", "the machine id")
	fl.StringVar(&f.region, "region", "", "the machine's region, e.g. iad")
	fl.StringVar(&f.image, "image", "", "the machine's current image")
	fl.StringArrayVar(&f.labels, "label", nil, "a machine metadata label KEY=VALUE (repeatable)")
	fl.IntVar(&f.deferrals, "deferrals", 0, "deferrals the machine already had")
	fl.StringVar(&f.at, "at", "", "decide at this time (RFC 3339; default now)")
	fl.StringVar(&f.policyFile, "policy", "", "policy file (default: MIGRATOR_POLICY, else built-in defaults)")
	fl.StringVar(&f.table, "table", "", "read the policy from this table of the --policy file (e.g. policy)")
	fl.BoolVar(&f.json, "json", false, "print the decision as a JSON object")
	return cmd
}

func explain(e *env, f explainFlags) error {
	if f.cause == "" {
		return usagef("policy explain: --cause is required (one of %s)", causeNames())
	}
	cause, err := policy.ParseCause(f.cause)
	if err != nil {
		return usagef("policy explain: --cause: %v", err)
	}
	if strings.TrimSpace(f.app) == "" {
		return usagef("policy explain: --app is required")
	}
	if f.deferrals < 0 {
		return usagef("policy explain: --deferrals %d: want 0 or more", f.deferrals)
	}
	labels := map[string]string{}
	for _, l := range f.labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return usagef("policy explain: --label %q: want KEY=VALUE", l)
		}
		if _, dup := labels[k]; dup {
			return usagef("policy explain: --label %s given twice", k)
		}
		labels[k] = v
	}
	now := clock.Real().Now()
	if f.at != "" {
		if now, err = time.Parse(time.RFC3339, f.at); err != nil {
			return usagef("policy explain: --at %q: want RFC 3339, e.g. 2026-03-08T07:30:00Z", f.at)
		}
	}
	var p *policy.Policy
	switch {
	case f.policyFile != "":
		p, err = readPolicyFile(f.policyFile, f.table)
	case f.table != "":
		err = usagef("policy explain: --table needs --policy")
	default:
		p, err = loadPolicy(e) // exactly what serve would use
	}
	if err != nil {
		return err
	}
	m := policy.Machine{App: f.app, MachineID: f.machine, Region: f.region, Image: f.image, Labels: labels, Deferrals: f.deferrals}
	ex := p.Explain(cause, m, now)
	if f.json {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(explainJSON(p, cause, m, now, ex))
	}
	printExplanation(e, p, cause, m, now, ex)
	return nil
}

// readPolicyFile parses FILE, or its table key (dotted for nested tables)
// when table is set. Any problem is a configuration error: exit 2.
func readPolicyFile(path, table string) (*policy.Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, usagef("policy file: %v", err)
	}
	if table == "" {
		p, err := policy.Parse(path, data)
		if err != nil {
			return nil, usageError{err}
		}
		return p, nil
	}
	key := strings.Split(table, ".")
	var doc map[string]toml.Primitive
	md, err := toml.Decode(string(data), &doc)
	if err != nil {
		// Parse words the syntax error as FILE:LINE: message.
		_, perr := policy.Parse(path, data)
		if perr == nil {
			perr = err
		}
		return nil, usageError{perr}
	}
	prim, ok := doc[key[0]]
	for _, k := range key[1:] {
		if !ok {
			break
		}
		var sub map[string]toml.Primitive
		if md.PrimitiveDecode(prim, &sub) != nil {
			return nil, usagef("%s: %s is not a table", path, table)
		}
		prim, ok = sub[k]
	}
	if !ok {
		return nil, usagef("%s: no [%s] table", path, table)
	}
	p, err := policy.ParseTable(path, data, &md, prim, key...)
	if err != nil {
		return nil, usageError{err}
	}
	return p, nil
}

func printExplanation(e *env, p *policy.Policy, c policy.Cause, m policy.Machine, now time.Time, ex policy.Explanation) {
	d := ex.Decision
	w := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(w, "%s:\t%s\n", k, fmt.Sprintf(format, args...)) }
	row("policy", "%s (version %s)", p.Source(), d.Version)
	row("cause", "%s", c)
	row("machine", "%s", describeMachine(m))
	row("at", "%s", stamp(now))
	for _, s := range ex.Skipped {
		row("skipped", "%s: %s", s.Rule, s.Reason)
	}
	if ex.Matched != nil {
		row("rule", "%s (line %d: %s)", d.Rule, ex.Matched.Line, ex.Matched.Selector())
	} else {
		row("rule", "%s (no rule matched: the cause's settings)", d.Rule)
	}
	if d.Quiet {
		row("quiet", "yes (no home-channel broadcast)")
	} else {
		row("quiet", "no (the gateway announces the restart on the home channel)")
	}
	switch {
	case d.IdleWait > 0:
		then := "defer, never drained"
		if d.OnBusy == policy.BusyDrain {
			then = "drain anyway"
		}
		row("idle wait", "%s (begin only when the agent has no work in flight; if it never has: %s)", d.IdleWait, then)
		if d.IdleQuietFor > 0 {
			row("idle quiet", "%s (an idle moment counts once nothing was in flight this long: background work is not in active_agents)", d.IdleQuietFor)
		}
	case d.MaxDeferrals > 0 && m.Deferrals >= d.MaxDeferrals:
		row("idle wait", "none (all deferrals used: drain at once)")
	default:
		row("idle wait", "none (begin at once)")
	}
	row("wait", "%s", d.Wait)
	row("deadline", "%s", stamp(d.Deadline))
	switch {
	case d.MaxDeferrals == 0:
		row("on deadline", "%s", d.OnDeadline)
	case d.OnDeadline == policy.Force:
		row("on deadline", "force (all %d deferrals used)", d.MaxDeferrals)
	default:
		row("on deadline", "defer (%d of %d deferrals used; then force)", m.Deferrals, d.MaxDeferrals)
	}
	if d.CanaryBake > 0 {
		row("canary bake", "%s (a canary is watched this long after it verified before the run widens)", d.CanaryBake)
	} else {
		row("canary bake", "none (the run widens as soon as its canaries migrated)")
	}
	if d.Undrainable == policy.UndrainableRecreate {
		row("undrainable", "recreate (a drain endpoint answering 404/401 is moved without a drain, loudly)")
	} else {
		row("undrainable", "fail (a drain endpoint answering 404/401 fails the machine)")
	}
	switch {
	case d.Window == "":
		row("window", "always")
	case d.InWindow && d.WindowEnd.IsZero():
		row("window", "%s: open", d.Window)
	case d.InWindow:
		row("window", "%s: open until %s", d.Window, stamp(d.WindowEnd))
	default:
		row("window", "%s: closed, opens %s", d.Window, stamp(d.NextWindow))
	}
	_ = w.Flush()
}

func describeMachine(m policy.Machine) string {
	s := m.App
	if m.MachineID != "" {
		s += "/" + m.MachineID
	}
	var extra []string
	if m.Region != "" {
		extra = append(extra, "region "+m.Region)
	}
	if len(m.Labels) > 0 {
		var kv []string
		for _, k := range slices.Sorted(maps.Keys(m.Labels)) {
			kv = append(kv, k+"="+m.Labels[k])
		}
		extra = append(extra, "labels "+strings.Join(kv, ","))
	}
	if m.Deferrals > 0 {
		extra = append(extra, fmt.Sprintf("%d %s so far", m.Deferrals, plural(m.Deferrals, "deferral", "deferrals")))
	}
	if len(extra) > 0 {
		s += " (" + strings.Join(extra, ", ") + ")"
	}
	return s
}

type explainedRule struct {
	Name     string `json:"name"`
	Line     int    `json:"line"`
	Selector string `json:"selector"`
}

type skippedRule struct {
	Rule   string `json:"rule"`
	Reason string `json:"reason"`
}

type explainOutput struct {
	Policy          string            `json:"policy"`
	Version         string            `json:"version"`
	Cause           policy.Cause      `json:"cause"`
	App             string            `json:"app"`
	MachineID       string            `json:"machine_id,omitempty"`
	Region          string            `json:"region,omitempty"`
	Labels          map[string]string `json:"labels"`
	Deferrals       int               `json:"deferrals"`
	At              string            `json:"at"`
	Rule            string            `json:"rule"`
	MatchedRule     *explainedRule    `json:"matched_rule"`
	Skipped         []skippedRule     `json:"skipped"`
	Quiet           bool              `json:"quiet"`
	IdleWait        string            `json:"idle_wait"`
	IdleWaitSeconds float64           `json:"idle_wait_seconds"`
	OnBusy          policy.OnBusy     `json:"on_busy"`
	// IdleQuietFor is how long the agent must have had nothing in flight
	// for a moment to count as idle ("0s": no quiet needed).
	IdleQuietFor        string             `json:"idle_quiet_for"`
	IdleQuietForSeconds float64            `json:"idle_quiet_for_seconds"`
	Wait                string             `json:"wait"`
	WaitSeconds         float64            `json:"wait_seconds"`
	Deadline            string             `json:"deadline"`
	OnDeadline          policy.OnDeadline  `json:"on_deadline"`
	MaxDeferrals        int                `json:"max_deferrals"`
	InWindow            bool               `json:"in_window"`
	Window              string             `json:"window"`
	NextWindow          string             `json:"next_window,omitempty"`
	WindowEnd           string             `json:"window_end,omitempty"`
	Undrainable         policy.Undrainable `json:"undrainable"`
	// CanaryBake is how long a canary is watched after it verified ("0s":
	// no bake).
	CanaryBake        string  `json:"canary_bake"`
	CanaryBakeSeconds float64 `json:"canary_bake_seconds"`
}

func explainJSON(p *policy.Policy, c policy.Cause, m policy.Machine, now time.Time, ex policy.Explanation) explainOutput {
	d := ex.Decision
	out := explainOutput{
		Policy: p.Source(), Version: d.Version, Cause: c,
		App: m.App, MachineID: m.MachineID, Region: m.Region, Labels: m.Labels, Deferrals: m.Deferrals,
		At: stamp(now), Rule: d.Rule, Skipped: []skippedRule{},
		Quiet: d.Quiet, IdleWait: d.IdleWait.String(), IdleWaitSeconds: d.IdleWait.Seconds(), OnBusy: d.OnBusy,
		IdleQuietFor: d.IdleQuietFor.String(), IdleQuietForSeconds: d.IdleQuietFor.Seconds(),
		Wait: d.Wait.String(), WaitSeconds: d.Wait.Seconds(), Deadline: stamp(d.Deadline),
		OnDeadline: d.OnDeadline, MaxDeferrals: d.MaxDeferrals,
		InWindow: d.InWindow, Window: d.Window, NextWindow: stamp(d.NextWindow), WindowEnd: stamp(d.WindowEnd),
		Undrainable: d.Undrainable, CanaryBake: d.CanaryBake.String(), CanaryBakeSeconds: d.CanaryBake.Seconds(),
	}
	if ex.Matched != nil {
		out.MatchedRule = &explainedRule{Name: ex.Matched.Name, Line: ex.Matched.Line, Selector: ex.Matched.Selector()}
	}
	for _, s := range ex.Skipped {
		out.Skipped = append(out.Skipped, skippedRule(s))
	}
	return out
}

// stamp formats an instant for people and JSON alike: RFC 3339 in UTC, ""
// for the zero time.
func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func causeNames() string {
	var s []string
	for _, c := range policy.Causes() {
		s = append(s, string(c))
	}
	return strings.Join(s, ", ")
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
