package cli

// run create --dry-run: renders orchestrator.Preview (what serve would do
// with each planned machine now, decided by serve's own code) as a table
// or as JSON, and writes nothing. Nothing here decides: every value shown
// is the Preview's.

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/hermes-cloud/migrator/internal/fleetcheck"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

type planDecisionJSON struct {
	Quiet       bool    `json:"quiet"`
	Rule        string  `json:"rule"`
	Wait        string  `json:"wait"`
	WaitSeconds float64 `json:"wait_seconds"`
	// IdleWait is how long serve would look for an idle moment before the
	// drain ("0s": begin at once); OnBusy what it does when none came.
	IdleWait        string            `json:"idle_wait"`
	IdleWaitSeconds float64           `json:"idle_wait_seconds"`
	OnBusy          policy.OnBusy     `json:"on_busy"`
	OnDeadline      policy.OnDeadline `json:"on_deadline"`
	MaxDeferrals    int               `json:"max_deferrals"`
	Deferrals       int               `json:"deferrals"`
	InWindow        bool              `json:"in_window"`
	Window          string            `json:"window"`
	NextWindow      string            `json:"next_window,omitempty"`
	// Undrainable is fail or recreate: what a 404/401 drain endpoint gets.
	Undrainable policy.Undrainable `json:"undrainable"`
	// Drain is the probe of the agent's drain endpoint (null: not probed,
	// e.g. MIGRATOR_DRAIN_KEY not set, or the machine is not running).
	Drain *planDrainJSON `json:"drain"`
	// CanaryBake is how long this machine, a canary, is watched after it
	// verified before the run widens (null: not a canary).
	CanaryBake        *string  `json:"canary_bake"`
	CanaryBakeSeconds *float64 `json:"canary_bake_seconds"`
	// IdleQuietFor is how long the agent must have shown nothing in flight
	// for an idle moment to count ("0s": no quiet needed).
	IdleQuietFor        string  `json:"idle_quiet_for"`
	IdleQuietForSeconds float64 `json:"idle_quiet_for_seconds"`
	// Hermes is the agent's Hermes version as probed, the features it
	// lacks and what that changes in this migration (null: not probed, or
	// the machine is not running).
	Hermes *planHermesJSON `json:"hermes"`
}

// planHermesJSON is what the agent's Hermes version changes (the Preview's
// HermesPreview).
type planHermesJSON struct {
	Version string                    `json:"version"`
	Lacks   []string                  `json:"lacks"`
	Notes   []orchestrator.HermesNote `json:"notes"`
}

// planDrainJSON says whether serve would drain the agent, move it without
// a drain (undrainable = recreate), or fail it.
type planDrainJSON struct {
	Readiness  gateway.Readiness `json:"readiness"`
	StatusCode int               `json:"status_code,omitempty"`
	// Path: "drain", "recreate_without_drain", "fail", or "none" (the
	// machine is not running: it is moved without a drain, having no users).
	Path orchestrator.DrainPath `json:"path"`
	// Detail says why an agent is not ready (a 401: which one, see fleet
	// check).
	Detail string `json:"detail,omitempty"`
}

type planMachineJSON struct {
	// What the preview decided about the machine's drain and launch, for
	// the text (the JSON has the state and host status they come from).
	hostOK, drained, leftDown, woken bool

	App       string `json:"app"`
	MachineID string `json:"machine_id"`
	Region    string `json:"region"`
	Image     string `json:"image"`
	// State is the machine's state now (started, stopped, suspended, …):
	// only a running one is drained and launched; HostStatus its host's
	// (ok, unknown, unreachable: deferred when its turn comes, unless back).
	State      string `json:"state"`
	HostStatus string `json:"host_status"`
	Digest     string `json:"digest,omitempty"`
	UpToDate   bool   `json:"up_to_date"`
	Canary     bool   `json:"canary"`
	// ExpectedDrainSeconds is the mean of the machine's last drain waits
	// (null: no drain history); the plan is ordered by it, longest first.
	ExpectedDrainSeconds *float64          `json:"expected_drain_seconds"`
	DrainSamples         int               `json:"drain_samples"`
	Decision             *planDecisionJSON `json:"decision"`
}

type dryRunJSON struct {
	DryRun      bool         `json:"dry_run"`
	Cause       policy.Cause `json:"cause"`
	TargetImage string       `json:"target_image"`
	Image       string       `json:"image"`
	// Change is the whole change, names only (image, env_set, env_unset,
	// secrets_version, restart); Lane the budget lane the run would take.
	Change         orchestrator.ChangeSummary `json:"change"`
	Lane           string                     `json:"lane"`
	Pinned         bool                       `json:"pinned"`
	Selector       store.Selector             `json:"selector"`
	Policy         string                     `json:"policy"`
	PolicyVersion  string                     `json:"policy_version"`
	DecidedAt      string                     `json:"decided_at"`
	Machines       int                        `json:"machines"`
	ToMove         int                        `json:"to_move"`
	UpToDate       int                        `json:"up_to_date"`
	MaxUnavailable int                        `json:"max_unavailable"`
	Plan           []planMachineJSON          `json:"plan"`
	// Excluded are the machines the selector matched that a run leaves
	// out, with why.
	Excluded []excludedJSON `json:"excluded"`
	// Probed: the agents' drain endpoints were probed (needs MIGRATOR_DRAIN_KEY).
	Probed bool `json:"probed"`
}

type excludedJSON struct {
	App       string `json:"app"`
	MachineID string `json:"machine_id"`
	State     string `json:"state"`
	Reason    string `json:"reason"`
	Detail    string `json:"detail,omitempty"`
}

// printDryRun renders the orchestrator's Preview of the plan: the decision
// serve would make for each machine now (same policy, same prior
// deferrals, same overrides, by the same code), and writes nothing.
func printDryRun(ctx context.Context, e *env, c *components, req orchestrator.RunRequest, sel string,
	planned []orchestrator.PlannedMachine, maxUnavail int, asJSON bool) error {
	var probe orchestrator.Prober
	if c.gw != nil {
		// Side-effect free, as fleet check is.
		probe = fleetcheck.Prober{Config: fleetcheck.Config{Logger: c.log, MinDrainVersion: c.minDrainVersion, Features: c.hermes}, Gateway: c.gw}
	}
	pv, err := c.orch.Preview(ctx, req, planned, probe)
	if err != nil {
		return fmt.Errorf("run create --dry-run: %w", err)
	}
	now := pv.DecidedAt
	out := dryRunJSON{Probed: pv.Probed, DryRun: true, Cause: req.Cause, TargetImage: req.TargetImage, Image: req.Image,
		Change: pv.Change, Lane: pv.Lane,
		Pinned: req.Image != req.TargetImage, Selector: req.Selector, Policy: c.policy.Source(),
		PolicyVersion: pv.PolicyVersion, DecidedAt: stamp(now), Machines: len(pv.Machines), MaxUnavailable: maxUnavail,
		Plan: []planMachineJSON{}, Excluded: []excludedJSON{}}
	for _, x := range pv.Excluded {
		out.Excluded = append(out.Excluded, excludedJSON{App: x.App, MachineID: x.ID, State: x.State, Reason: x.Reason, Detail: x.Detail})
	}
	withHistory := 0
	for _, m := range pv.Machines {
		p := m.PlannedMachine
		pm := planMachineJSON{App: p.App, MachineID: p.ID, Region: p.Region, Image: p.Image, UpToDate: p.UpToDate, Canary: p.Canary,
			DrainSamples: p.DrainSamples, State: p.State, HostStatus: p.HostStatus, Digest: p.ImageRef.Digest,
			hostOK: m.HostOK, drained: m.Drained, leftDown: m.LeftDown, woken: m.Woken}
		if m.HostOK {
			pm.HostStatus = "ok" // Fly leaves it out at times
		}
		if p.DrainSamples > 0 {
			v := p.ExpectedDrain.Seconds()
			pm.ExpectedDrainSeconds = &v
			withHistory++
		}
		if p.UpToDate {
			out.UpToDate++
		} else {
			out.ToMove++
			d := m.Decision
			pm.Decision = &planDecisionJSON{Quiet: d.Quiet, Rule: d.Rule, Wait: d.Wait.String(), WaitSeconds: d.Wait.Seconds(),
				IdleWait: d.IdleWait.String(), IdleWaitSeconds: d.IdleWait.Seconds(), OnBusy: d.OnBusy, OnDeadline: d.OnDeadline,
				MaxDeferrals: d.MaxDeferrals, Deferrals: m.Deferrals, InWindow: d.InWindow,
				Window: d.Window, NextWindow: stamp(d.NextWindow), Undrainable: d.Undrainable,
				IdleQuietFor: d.IdleQuietFor.String(), IdleQuietForSeconds: d.IdleQuietFor.Seconds()}
			if h := m.Hermes; h != nil {
				pm.Decision.Hermes = &planHermesJSON{Version: h.Version, Lacks: h.Lacks, Notes: h.Notes}
				if pm.Decision.Hermes.Lacks == nil {
					pm.Decision.Hermes.Lacks = []string{}
				}
				if pm.Decision.Hermes.Notes == nil {
					pm.Decision.Hermes.Notes = []orchestrator.HermesNote{}
				}
			}
			if a := m.Probe; a != nil {
				pm.Decision.Drain = &planDrainJSON{Readiness: a.Readiness, StatusCode: a.StatusCode, Path: a.Path}
				if a.AuthLayer == gateway.AuthLoginGate || a.AuthLayer == gateway.AuthDrainRoute {
					pm.Decision.Drain.Detail = a.Detail // which 401 it was
				}
			}
			if b := m.CanaryBake; b != nil {
				text, secs := b.String(), b.Seconds()
				pm.Decision.CanaryBake, pm.Decision.CanaryBakeSeconds = &text, &secs
			}
		}
		out.Plan = append(out.Plan, pm)
	}
	if asJSON {
		return writeJSON(e.stdout, out)
	}
	w := e.stdout
	pin := "not pinned: --no-pin"
	if out.Pinned {
		pin = "pinned from " + req.TargetImage
	}
	fmt.Fprintf(w, "dry run: nothing was written\n")
	if req.Image != "" {
		fmt.Fprintf(w, "cause %s, image %s (%s)\n", req.Cause, req.Image, pin)
	} else {
		fmt.Fprintf(w, "cause %s, no image: each machine keeps the digest it runs\n", req.Cause)
	}
	if pv.Change.BeyondImage() {
		fmt.Fprintf(w, "change: %s\n", pv.Change)
	}
	if pv.Lane == store.LaneCustomer {
		fmt.Fprintf(w, "budget: the customer lane (policy budget_lane: %s), not the fleet cap\n", c.policy.Lane())
	}
	fmt.Fprintf(w, "selector: %s\n", sel)
	fmt.Fprintf(w, "policy: %s (version %s), decisions as of %s\n", c.policy.Source(), pv.PolicyVersion, stamp(now))
	fmt.Fprintf(w, "%d %s: %d to move, %d already up to date; max unavailable %d; canary %d\n\n",
		out.Machines, plural(out.Machines, "machine", "machines"), out.ToMove, out.UpToDate, maxUnavail, req.Canary)
	if !out.Probed {
		fmt.Fprintf(w, "drain endpoints not probed (%s is not set): DRAIN shows only the undrainable setting\n\n", drainKeyEnv)
	} else if n := countPath(out.Plan, orchestrator.DrainPathRecreate); n > 0 {
		fmt.Fprintf(w, "%d %s would be recreated without a drain (drain endpoint 404/401, undrainable = recreate): loud\n\n",
			n, plural(n, "agent", "agents"))
	}
	if n := countDown(out.Plan); n > 0 {
		fmt.Fprintf(w, "%d %s not running (stopped, suspended): moved without a drain and left down (skip_launch)\n\n",
			n, plural(n, "machine is", "machines are"))
	}
	if n := countWoken(out.Plan); n > 0 {
		fmt.Fprintf(w, "%d %s down: woken by %s update to run the image (a canary proves it only by running it), then put back down\n\n",
			n, plural(n, "canary is", "canaries are"), plural(n, "its", "their"))
	}
	if n := countHostNotOK(out.Plan); n > 0 {
		fmt.Fprintf(w, "%d %s on a host that is not ok: deferred when its turn comes (never leased or drained), unless the host is back\n\n",
			n, plural(n, "machine is", "machines are"))
	}
	// Which 401s: a gated dashboard answers 401 before routing, so an older
	// Hermes and a missing secret look alike but for the version.
	for _, p := range out.Plan {
		if d := p.Decision; d != nil && d.Drain != nil && d.Drain.Detail != "" {
			fmt.Fprintf(w, "%s/%s: %s\n", p.App, p.MachineID, d.Drain.Detail)
		}
	}
	// What each agent's Hermes lacks changes in its migration.
	hermesLines := 0
	for _, p := range out.Plan {
		if d := p.Decision; d != nil && d.Hermes != nil {
			for _, n := range d.Hermes.Notes {
				fmt.Fprintf(w, "%s/%s: %s\n", p.App, p.MachineID, oneLine(n.Reason, 400))
				hermesLines++
			}
		}
	}
	if hermesLines > 0 {
		fmt.Fprintln(w)
	}
	if withHistory > 0 {
		fmt.Fprintf(w, "order: longest expected drain first (the mean of each machine's last drains; %d of %d to move have drain history, the rest rank as the mean)\n\n",
			withHistory, out.ToMove)
	} else {
		fmt.Fprintf(w, "order: app and machine (no machine has drain history yet)\n\n")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "APP\tMACHINE\tREGION\tSTATE\tCURRENT IMAGE\tUP TO DATE\tCANARY\tEXPECTED DRAIN\tQUIET\tRULE\tIDLE WAIT\tWAIT\tON DEADLINE\tWINDOW\tDRAIN")
	for _, p := range out.Plan {
		if p.Decision == nil {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\tyes\t-\t-\t-\t-\t-\t-\t-\t-\t-\n", p.App, p.MachineID, p.Region, stateText(p), p.Image)
			continue
		}
		expected := "-"
		if p.ExpectedDrainSeconds != nil {
			expected = fmt.Sprintf("%s (%d)", (time.Duration(*p.ExpectedDrainSeconds * float64(time.Second))).Round(time.Second), p.DrainSamples)
		}
		d := p.Decision
		onDeadline := string(d.OnDeadline)
		if d.MaxDeferrals > 0 && d.OnDeadline == policy.Defer {
			onDeadline = fmt.Sprintf("defer (%d of %d used)", d.Deferrals, d.MaxDeferrals)
		}
		window := "always"
		switch {
		case d.Window != "" && d.InWindow:
			window = "open (" + d.Window + ")"
		case d.Window != "":
			window = "closed until " + d.NextWindow + " (" + d.Window + "): would be deferred"
		}
		canary := yesNo(p.Canary)
		if d.CanaryBake != nil {
			canary = "yes, bake " + *d.CanaryBake
			if *d.CanaryBakeSeconds == 0 {
				canary = "yes, no bake"
			}
		}
		idle := idleWaitText(d.IdleWaitSeconds, d.OnBusy)
		if d.IdleWaitSeconds > 0 && d.IdleQuietForSeconds > 0 {
			idle += ", quiet " + d.IdleQuietFor
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\tno\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.App, p.MachineID, p.Region, stateText(p), p.Image,
			canary, expected, yesNo(d.Quiet), d.Rule, idle, d.Wait, onDeadline, window, drainColumn(p))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(out.Excluded) > 0 {
		fmt.Fprintf(w, "\nleft out (%d, never touched):\n", len(out.Excluded))
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "APP\tMACHINE\tSTATE\tREASON")
		for _, x := range out.Excluded {
			reason := x.Reason
			if x.Detail != "" {
				reason += " (" + x.Detail + ")"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", x.App, x.MachineID, x.State, reason)
		}
		return tw.Flush()
	}
	return nil
}

// stateText is the STATE column: the machine's state, and its host's
// status when that is not ok.
func stateText(p planMachineJSON) string {
	if !p.hostOK {
		return p.State + ", host " + p.HostStatus
	}
	return p.State
}

func countDown(plan []planMachineJSON) int {
	n := 0
	for _, p := range plan {
		if !p.UpToDate && p.leftDown && p.hostOK {
			n++
		}
	}
	return n
}

func countWoken(plan []planMachineJSON) int {
	n := 0
	for _, p := range plan {
		if !p.UpToDate && p.woken {
			n++
		}
	}
	return n
}

func countHostNotOK(plan []planMachineJSON) int {
	n := 0
	for _, p := range plan {
		if !p.UpToDate && !p.hostOK {
			n++
		}
	}
	return n
}

// idleWaitText says how long serve looks for an idle moment and what then:
// "30m, then defer", or "none" (begin at once).
func idleWaitText(seconds float64, onBusy policy.OnBusy) string {
	if seconds <= 0 {
		return "none"
	}
	return fmt.Sprintf("%s, then %s", time.Duration(seconds*float64(time.Second)), onBusy)
}

// drainColumn is the DRAIN column: what serve would do about the machine's
// drain, as the preview decided it.
func drainColumn(p planMachineJSON) string {
	d := p.Decision
	switch {
	case !p.hostOK:
		return "none: host " + p.HostStatus + ", would be deferred"
	case p.woken:
		return "none (" + p.State + "): canary woken to run the image, then put back " + p.State
	case p.leftDown:
		return "none (" + p.State + "): moved without a drain, left down"
	case !p.drained:
		return "none (" + p.State + "): moved without a drain"
	case d.Drain == nil:
		return "undrainable=" + string(d.Undrainable)
	}
	switch d.Drain.Path {
	case orchestrator.DrainPathRecreate:
		return fmt.Sprintf("no drain: %d %s, recreate (loud)", d.Drain.StatusCode, d.Drain.Readiness)
	case orchestrator.DrainPathFail:
		return fmt.Sprintf("would fail: %d %s (undrainable=%s)", d.Drain.StatusCode, d.Drain.Readiness, d.Undrainable)
	case orchestrator.DrainPathNone:
		return "none (not running)"
	}
	if d.Drain.Readiness != gateway.Ready {
		return "drain (probe: " + string(d.Drain.Readiness) + ")"
	}
	return "drain"
}

func countPath(plan []planMachineJSON, path orchestrator.DrainPath) int {
	n := 0
	for _, p := range plan {
		if p.Decision != nil && p.Decision.Drain != nil && p.Decision.Drain.Path == path {
			n++
		}
	}
	return n
}
