package orchestrator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"regexp/syntax"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// ErrNothingSelected is returned when a selector matches no machines.
var ErrNothingSelected = errors.New("selector matched no machines")

// Why a machine a selector matched is not moved by a run (Excluded.Reason).
const (
	// ExcludedReleaseCommand, ExcludedConsole: not the app's machines
	// (fly-go's IsReleaseCommandMachine, IsFlyAppsConsole; flaps.ListActive
	// drops them and flyctl never updates them).
	ExcludedReleaseCommand = "release-command machine"
	ExcludedConsole        = "console machine"
	// ExcludedDestroyed: not active (fly-go's IsActive).
	ExcludedDestroyed = "destroyed"
	// ExcludedContainers: a multi-container machine and no --container (an
	// update of config.image would leave its containers on their images).
	ExcludedContainers = "multi-container machine, no --container"
	// ExcludedNoContainer: a multi-container machine without the
	// container the run names.
	ExcludedNoContainer = "no such container"
)

// Excluded is a machine a selector matched that a run does not move.
type Excluded struct {
	flymachines.Machine
	Reason string // one of the Excluded* constants
	Detail string // e.g. the machine's containers
}

// ExcludedOnlyError: the selector matched machines, but only ones a run
// does not move. errors.Is(err, ErrNothingSelected) holds.
type ExcludedOnlyError struct{ Excluded []Excluded }

func (e *ExcludedOnlyError) Error() string {
	var parts []string
	for i, x := range e.Excluded {
		if i == 3 {
			parts = append(parts, fmt.Sprintf("and %d more", len(e.Excluded)-3))
			break
		}
		parts = append(parts, fmt.Sprintf("%s/%s (%s)", x.App, x.ID, x.Reason))
	}
	return "selector matched only machines a run does not move: " + strings.Join(parts, ", ")
}

func (e *ExcludedOnlyError) Unwrap() error { return ErrNothingSelected }

// NoSuchContainerError: the run names a container no selected machine has.
type NoSuchContainerError struct{ Container string }

func (e *NoSuchContainerError) Error() string {
	return fmt.Sprintf("no selected machine has a container %q", e.Container)
}

// RunRequest asks for a run: a cause, the machines (Selector), and the
// change to move them to (change.go): Image (already pinned by the caller
// when pinning is wanted; "" keeps each machine's digest), Env to set and
// UnsetEnv to unset in config.env, SecretsVersion to pick up, Restart; at
// least one. ValidateRequest checks it (CreateRun does too): every
// problem is a *FieldError naming the field. Env values are a customer's:
// CreateRun keeps them only sealed (Config.Sealer).
type RunRequest struct {
	Cause       policy.Cause
	TargetImage string // as asked; defaults to Image
	Image       string
	// Env sets keys of config.env; UnsetEnv removes keys.
	Env      map[string]string
	UnsetEnv []string
	// SecretsVersion is the app secrets version NAS's secrets write was
	// answered with (Fly's SetAppSecretResp/UpdateAppSecretsResp
	// version): every update carries min_secrets_version at least this.
	// 0: none.
	SecretsVersion uint64
	// Restart makes a new process of each machine's config even when
	// nothing else changes.
	Restart          bool
	Selector         store.Selector
	MaxUnavailable   string // "N" or "P%"; default "1"
	Canary           int
	FailureThreshold int
	DeadlineOverride time.Duration // 0: the policy's wait
	// IdleWaitOverride replaces the policy's idle wait (0: begin at once);
	// nil: the policy's.
	IdleWaitOverride *time.Duration
	// Undrainable overrides the policy's undrainable setting for the run
	// (`run create --undrainable`); empty: the policy decides.
	Undrainable policy.Undrainable
	// CanaryBakeOverride replaces the policy's canary_bake for the run's
	// canaries (`run create --canary-bake`; 0: no bake); nil: the policy's.
	CanaryBakeOverride *time.Duration
	RequestedBy        string
	Reason             string
	IdempotencyKey     string
	// SoleOpenKeyPrefix, if set, makes the run one of a kind: it is not
	// created while a run of its cause whose idempotency key starts with
	// this prefix is open, and CreateRun returns that run instead (not
	// created). The check and the insert share one transaction lock on the
	// prefix, so two auto-update ticks that overlap (a slow plan, a tick
	// delivered late) cannot both create a run for the channel.
	SoleOpenKeyPrefix string
	// RequestDigest is an API request's keyed digest, recorded with the
	// run so a retry with the same key and another request is told apart
	// (internal/api). "": none.
	RequestDigest string
	// Excluded are the machines the selector matched that the run does
	// not move (RunPlan.Excluded), recorded with the run's creation so the
	// audit says why each was left out.
	Excluded []Excluded
}

// PlannedMachine is one machine a run would move, with what the policy
// would decide for it now. Its Image is the image the run moves:
// config.image, or the selector's container's.
type PlannedMachine struct {
	flymachines.Machine
	UpToDate bool
	Canary   bool
	// ExpectedDrain is the mean of the machine's last DrainSamples drain
	// waits; DrainSamples 0 means it has no drain history.
	ExpectedDrain time.Duration
	DrainSamples  int
}

// MaxUnavailable resolves "N" or "P%" against n machines: a percentage is
// rounded up, and never below 1.
func MaxUnavailable(spec string, n int) (int, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return 1, nil
	}
	if p, ok := strings.CutSuffix(spec, "%"); ok {
		v, err := strconv.ParseFloat(p, 64)
		if err != nil || v <= 0 || v > 100 || math.IsNaN(v) {
			return 0, fmt.Errorf("max unavailable %q: want a count like 5 or a percentage like 10%%", spec)
		}
		return max(1, int(math.Ceil(v*float64(n)/100))), nil
	}
	v, err := strconv.Atoi(spec)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("max unavailable %q: want a count like 5 or a percentage like 10%%", spec)
	}
	return v, nil
}

// RunPlan is what a run would move and what it leaves out, with why.
type RunPlan struct {
	Machines []PlannedMachine
	Excluded []Excluded
}

// Plan lists the machines sel matches through Fly, marking those already on
// image, in the order the run will start them: longest expected drain first
// (see orderByExpectedDrain), with canary machines picked among the
// quickest drainers. Machines a run does not move are left out (PlanRun
// lists them). A selector that matches nothing is ErrNothingSelected; one
// that matches only machines a run does not move is *ExcludedOnlyError.
func (o *Orchestrator) Plan(ctx context.Context, sel store.Selector, image string, canary int) ([]PlannedMachine, error) {
	p, err := o.PlanRun(ctx, sel, image, canary)
	return p.Machines, err
}

// PlanRun is Plan with the machines left out and why: release-command,
// console and destroyed machines, and multi-container machines without
// the selector's container. A machine whose host is not ok is planned
// (HostOK false): it is deferred when its turn comes unless the host is
// back. A selector's container that no selected machine has is a
// *NoSuchContainerError.
func (o *Orchestrator) PlanRun(ctx context.Context, sel store.Selector, image string, canary int) (RunPlan, error) {
	return o.planRun(ctx, sel, planWant{image: image}, canary)
}

// PlanRequest is PlanRun for req's selector, canaries and whole change: a
// machine is up to date when it holds the image (any, for a change
// without one) and the env; a change with a secrets version or a restart
// is judged when each machine's turn comes.
func (o *Orchestrator) PlanRequest(ctx context.Context, req RunRequest) (RunPlan, error) {
	return o.planRun(ctx, req.Selector, wantOf(req), req.Canary)
}

func (o *Orchestrator) planRun(ctx context.Context, sel store.Selector, want planWant, canary int) (RunPlan, error) {
	machines, excluded, err := SelectWithExclusions(ctx, o.fly, sel)
	if err != nil {
		return RunPlan{}, err
	}
	out := make([]PlannedMachine, 0, len(machines))
	hasContainer := false
	for _, m := range machines {
		img, err := m.ImageOf(sel.Container)
		var ce *flymachines.ContainersError
		if errors.As(err, &ce) {
			reason := ExcludedContainers
			if ce.Want != "" {
				reason = ExcludedNoContainer
			}
			excluded = append(excluded, Excluded{Machine: m, Reason: reason, Detail: "containers " + strings.Join(ce.Containers, ", ")})
			continue
		}
		if len(m.Containers) > 0 {
			hasContainer = true
		}
		m.Image = img
		out = append(out, PlannedMachine{Machine: m, UpToDate: want.upToDate(img, m.Env)})
	}
	if sel.Container != "" && !hasContainer {
		return RunPlan{Excluded: excluded}, &NoSuchContainerError{Container: sel.Container}
	}
	if len(out) == 0 {
		return RunPlan{Excluded: excluded}, &ExcludedOnlyError{Excluded: excluded}
	}
	keys := make([]store.MachineKey, 0, len(out))
	for _, pm := range out {
		if !pm.UpToDate {
			keys = append(keys, store.MachineKey{App: pm.App, MachineID: pm.ID})
		}
	}
	est, err := o.store.Q().DrainEstimates(ctx, keys, DrainHistory)
	if err != nil {
		return RunPlan{}, err
	}
	orderByExpectedDrain(out, est)
	pickCanaries(out, canary)
	return RunPlan{Machines: out, Excluded: excluded}, nil
}

// Lister is what selecting machines needs of the Machines API.
type Lister interface {
	ListApps(ctx context.Context, org string) ([]flymachines.App, error)
	ListMachines(ctx context.Context, app string) ([]flymachines.Machine, error)
}

// SelectMachines lists, through Fly, the app machines sel matches, in app
// and machine-list order: the org's apps by prefix or regex (or the named
// apps), then the machine ids and labels asked for; release-command,
// console and destroyed machines are left out (see SelectWithExclusions).
// `fleet check` and `secret sync` select with it. A selector that matches
// nothing is ErrNothingSelected (only left-out machines:
// *ExcludedOnlyError, which is ErrNothingSelected too).
func SelectMachines(ctx context.Context, fly Lister, sel store.Selector) ([]flymachines.Machine, error) {
	ms, excluded, err := SelectWithExclusions(ctx, fly, sel)
	if err == nil && len(ms) == 0 {
		err = &ExcludedOnlyError{Excluded: excluded}
	}
	return ms, err
}

// SelectWithExclusions is SelectMachines with the machines it leaves out
// and why: release-command and console machines, which sit in an app's
// listing beside its machines (fly-go's IsReleaseCommandMachine and
// IsFlyAppsConsole; flaps.ListActive drops them, and flyctl never updates
// them), and machines that are not active (destroyed, destroying). A
// selector that matches nothing at all is ErrNothingSelected.
func SelectWithExclusions(ctx context.Context, fly Lister, sel store.Selector) ([]flymachines.Machine, []Excluded, error) {
	var appRe *regexp.Regexp
	if sel.AppRegex != "" {
		var err error
		if appRe, err = regexp.Compile(sel.AppRegex); err != nil {
			var se *syntax.Error
			if errors.As(err, &se) {
				return nil, nil, fmt.Errorf("app regex: invalid regular expression: %s", se.Code)
			}
			return nil, nil, errors.New("app regex: invalid regular expression")
		}
	}
	apps := slices.Clone(sel.Apps)
	if len(apps) == 0 {
		if sel.Org == "" {
			return nil, nil, errors.New("selector needs an org or explicit apps")
		}
		all, err := fly.ListApps(ctx, sel.Org)
		if err != nil {
			return nil, nil, fmt.Errorf("list apps of org %s: %w", sel.Org, err)
		}
		for _, a := range all {
			if strings.HasPrefix(a.Name, sel.AppPrefix) && (appRe == nil || appRe.MatchString(a.Name)) {
				apps = append(apps, a.Name)
			}
		}
	}
	slices.Sort(apps)
	apps = slices.Compact(apps)

	perApp := make([][]flymachines.Machine, len(apps))
	errs := make([]error, len(apps))
	var g errgroup.Group
	g.SetLimit(8)
	for i, app := range apps {
		g.Go(func() error {
			perApp[i], errs[i] = fly.ListMachines(ctx, app)
			if errs[i] != nil {
				errs[i] = fmt.Errorf("list machines of %s: %w", app, errs[i])
			}
			return nil
		})
	}
	_ = g.Wait() // errors are kept per app, all of them reported
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	var out []flymachines.Machine
	var excluded []Excluded
	for _, ms := range perApp {
		for _, m := range ms {
			if len(sel.MachineIDs) > 0 && !slices.Contains(sel.MachineIDs, m.ID) {
				continue
			}
			if !labelsMatch(m.Labels, sel.Labels) {
				continue
			}
			switch {
			case m.ReleaseCommand:
				excluded = append(excluded, Excluded{Machine: m, Reason: ExcludedReleaseCommand})
			case m.Console:
				excluded = append(excluded, Excluded{Machine: m, Reason: ExcludedConsole})
			case m.State == "destroyed" || m.State == "destroying":
				excluded = append(excluded, Excluded{Machine: m, Reason: ExcludedDestroyed})
			default:
				out = append(out, m)
			}
		}
	}
	if len(out) == 0 && len(excluded) == 0 {
		return nil, nil, ErrNothingSelected
	}
	return out, excluded, nil
}

// DrainHistory is how many of a machine's most recent drains its expected
// drain wait is averaged over: enough to smooth one unusual drain, recent
// enough to follow an agent whose work changes.
const DrainHistory = 5

// orderByExpectedDrain sorts the machines to move longest expected drain
// first (an LPT order), keeping plan order among equals. Refill is greedy
// and cannot know how long a drain will wait until it ends; with
// heavy-tailed waits the makespan is set by whichever long drain starts
// last, so starting the long ones first is what keeps it near the lower
// bound. A machine without drain history ranks as the fleet's typical
// machine (the mean of the known estimates). Up-to-date machines, which
// move nothing, go last.
func orderByExpectedDrain(ms []PlannedMachine, est map[store.MachineKey]store.DrainEstimate) {
	var sum time.Duration
	for i := range ms {
		if e, ok := est[store.MachineKey{App: ms[i].App, MachineID: ms[i].ID}]; ok && !ms[i].UpToDate {
			ms[i].ExpectedDrain, ms[i].DrainSamples = e.Mean, e.Samples
			sum += e.Mean
		}
	}
	if len(est) == 0 {
		return
	}
	typical := sum / time.Duration(len(est))
	rank := func(pm PlannedMachine) time.Duration {
		switch {
		case pm.UpToDate:
			return -1
		case pm.DrainSamples == 0:
			return typical
		}
		return pm.ExpectedDrain
	}
	slices.SortStableFunc(ms, func(a, b PlannedMachine) int { return cmp.Compare(rank(b), rank(a)) })
}

// pickCanaries marks n machines to move as the run's canaries. A canary
// proves the image only by running it, so running machines on a host that
// is ok come first (drained, launched, judged against what their agent
// showed before), then machines that are down on a host that is ok
// (stopped, suspended, created: woken by their update to run the image,
// then put back down, step_wake.go; in a fleet that is mostly asleep
// these are most of the candidates), and machines whose host is not ok
// last (deferred: they prove nothing, and are replaced). Within each,
// those with the shortest expected drains (no history counts as the
// longest), so the canary gate, which holds back every other machine,
// opens as soon as the new image has proved itself. The canary tests the
// image, not the drain.
func pickCanaries(ms []PlannedMachine, n int) {
	if n <= 0 {
		return
	}
	idx := make([]int, 0, len(ms))
	for i, pm := range ms {
		if !pm.UpToDate {
			idx = append(idx, i)
		}
	}
	proves := func(i int) int {
		switch {
		case !ms[i].HostOK():
			return 3
		case running(ms[i].State):
			return 0
		case wakes(true, ms[i].Machine):
			return 1
		}
		return 2 // failed, or on its way between states
	}
	key := func(i int) time.Duration {
		if ms[i].DrainSamples == 0 {
			return math.MaxInt64
		}
		return ms[i].ExpectedDrain
	}
	slices.SortStableFunc(idx, func(a, b int) int { return cmp.Or(cmp.Compare(proves(a), proves(b)), cmp.Compare(key(a), key(b))) })
	for _, i := range idx[:min(n, len(idx))] {
		ms[i].Canary = true
	}
}

func labelsMatch(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// CreateRun plans req and records the run with its machines, then starts as
// many as the budget allows, all in one transaction. A repeated request with
// the same idempotency key returns the existing run and created=false.
//
// It is the one way a run is made (the CLI's run create, the auto-update,
// an API): req is checked first (ValidateRequest: a *FieldError naming the
// field, nothing read or written), env values need Config.Sealer
// (ErrNoSealKey), a selector that matches nothing is ErrNothingSelected
// (or *ExcludedOnlyError, *NoSuchContainerError). The run takes the budget
// lane of its cause (policy budget_lane): a customer cause's own small
// budget, recomputed here from the fleet's size, or the fleet cap.
func (o *Orchestrator) CreateRun(ctx context.Context, req RunRequest, planned []PlannedMachine) (store.Run, bool, error) {
	if err := ValidateRequest(req); err != nil {
		return store.Run{}, false, err
	}
	if len(req.Env) > 0 && o.cfg.Sealer == nil {
		return store.Run{}, false, ErrNoSealKey
	}
	if req.IdempotencyKey != "" {
		r, err := o.store.Q().RunByIdempotencyKey(ctx, req.IdempotencyKey)
		if err == nil {
			return r, false, nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return store.Run{}, false, err
		}
	}
	if planned == nil {
		p, err := o.PlanRequest(ctx, req)
		if err != nil {
			return store.Run{}, false, err
		}
		planned, req.Excluded = p.Machines, p.Excluded
	}
	toMove := 0
	machines := make([]store.NewMachine, len(planned))
	for i, p := range planned {
		machines[i] = store.NewMachine{App: p.App, MachineID: p.ID, Region: p.Region, PrivateIP: p.PrivateIP,
			Labels: p.Labels, FromImage: p.Image, FromInstanceID: p.InstanceID, UpToDate: p.UpToDate, Canary: p.Canary,
			ExpectedDrain: p.ExpectedDrain}
		if !p.UpToDate {
			toMove++
		}
	}
	maxUnavail, err := MaxUnavailable(req.MaxUnavailable, toMove)
	if err != nil {
		return store.Run{}, false, err
	}
	target := req.TargetImage
	if target == "" {
		target = req.Image
	}
	change := SummaryOf(req)
	lane := o.laneOf(req.Cause)
	r := store.Run{Cause: string(req.Cause), TargetImage: target, Image: req.Image, Selector: req.Selector,
		EnvSet: change.EnvSet, EnvUnset: change.EnvUnset, SecretsVersion: req.SecretsVersion, Restart: req.Restart, Lane: lane,
		MaxUnavailable: maxUnavail, MaxUnavailableSpec: req.MaxUnavailable, Canary: req.Canary,
		FailureThreshold: req.FailureThreshold, DeadlineOverride: req.DeadlineOverride, IdleWaitOverride: req.IdleWaitOverride,
		Undrainable: string(req.Undrainable), CanaryBakeOverride: req.CanaryBakeOverride,
		RequestedBy: req.RequestedBy, Reason: req.Reason, IdempotencyKey: req.IdempotencyKey, RequestDigest: req.RequestDigest,
		State: store.RunRunning, PolicyVersion: o.pol.Version()}
	var out store.Run
	var created bool
	err = o.store.InTx(ctx, func(q *store.Q, tx pgx.Tx) error {
		var err error
		if req.SoleOpenKeyPrefix != "" {
			if err := q.LockName(ctx, "run key prefix:"+req.SoleOpenKeyPrefix); err != nil {
				return err
			}
			open, ok, err := q.OpenRunByKeyPrefix(ctx, string(req.Cause), req.SoleOpenKeyPrefix)
			if err != nil || ok {
				out = open
				return err
			}
		}
		if out, created, err = q.CreateRun(ctx, r, machines); err != nil || !created {
			return err
		}
		sealed, err := o.sealEnv(out.ID, req.Env)
		if err != nil {
			return err
		}
		if err := q.SaveRunEnv(ctx, out.ID, sealed); err != nil {
			return err
		}
		detail := map[string]any{"cause": out.Cause, "image": out.Image, "machines": len(machines), "to_move": toMove,
			"max_unavailable": maxUnavail, "requested_by": out.RequestedBy, "reason": out.Reason,
			"canary": out.Canary, "canary_bake_override": durationText(out.CanaryBakeOverride),
			"change": change.Detail(), "lane": lane}
		if lane == store.LaneCustomer {
			fleet, err := q.FleetMachines(ctx)
			if err != nil {
				return err
			}
			l := o.pol.Lane()
			laneCap := l.Cap(fleet)
			if err := q.SetLaneCap(ctx, store.LaneCustomer, laneCap, fleet, o.pol.Version()); err != nil {
				return err
			}
			detail["lane_cap"], detail["fleet_machines"] = laneCap, fleet
		}
		if len(req.Excluded) > 0 {
			ex := make([]map[string]string, len(req.Excluded))
			for i, x := range req.Excluded {
				ex[i] = map[string]string{"app": x.App, "machine_id": x.ID, "state": x.State, "reason": x.Reason, "detail": x.Detail}
			}
			detail["excluded"] = ex
		}
		if err := q.AppendEvents(ctx, store.Scope{RunID: out.ID}, store.Event{Kind: "run.created", Target: fmt.Sprint(out.ID),
			Detail: detail}); err != nil {
			return err
		}
		if err := o.fillTx(ctx, q, tx); err != nil {
			return err
		}
		out, _, err = q.SettleRun(ctx, out.ID) // a run with nothing to move is done at once
		return err
	})
	if err != nil {
		return store.Run{}, false, fmt.Errorf("create run: %w", err)
	}
	return out, created, nil
}

// durationText is d as text, or nil (the policy's) when unset.
func durationText(d *time.Duration) any {
	if d == nil {
		return nil
	}
	return d.String()
}
