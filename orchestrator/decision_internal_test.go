package orchestrator

import (
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/fleetcheck"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

func durationPtr(d time.Duration) *time.Duration { return &d }

// decideFor applies a run's overrides to the policy's decision: each
// override replaces its setting and nothing else; a machine out of
// deferrals gets no idle wait, whatever the run asked.
func TestDecideForAppliesTheOverrides(t *testing.T) {
	pol, err := policy.Parse("test.toml", []byte(`
[causes.image-migration]
wait = "30m"
idle_wait = "10m"
on_busy = "defer"
on_deadline = "defer"
max_deferrals = 2
canary_bake = "3m"

[[rules]]
name = "legacy"
app_prefix = "legacy-"
undrainable = "recreate"
quiet = false
`))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 24, 3, 0, 0, 0, time.UTC)
	type want struct {
		wait, idle, bake time.Duration
		undrainable      policy.Undrainable
		rule             string
		quiet            bool
	}
	for _, tc := range []struct {
		name      string
		app       string
		deferrals int
		ov        overrides
		want      want
	}{
		{"the policy's", "hermes-agent-1", 0, overrides{},
			want{30 * time.Minute, 10 * time.Minute, 3 * time.Minute, policy.UndrainableFail, "default:image-migration", true}},
		{"a rule's", "legacy-1", 0, overrides{},
			want{30 * time.Minute, 10 * time.Minute, 3 * time.Minute, policy.UndrainableRecreate, "legacy", false}},
		{"the run's deadline", "hermes-agent-1", 0, overrides{Deadline: 90 * time.Second},
			want{90 * time.Second, 10 * time.Minute, 3 * time.Minute, policy.UndrainableFail, "default:image-migration", true}},
		{"the run's idle wait", "hermes-agent-1", 1, overrides{IdleWait: durationPtr(time.Minute)},
			want{30 * time.Minute, time.Minute, 3 * time.Minute, policy.UndrainableFail, "default:image-migration", true}},
		{"the run's idle wait of 0", "hermes-agent-1", 0, overrides{IdleWait: durationPtr(0)},
			want{30 * time.Minute, 0, 3 * time.Minute, policy.UndrainableFail, "default:image-migration", true}},
		{"out of deferrals: no idle wait", "hermes-agent-1", 2, overrides{},
			want{30 * time.Minute, 0, 3 * time.Minute, policy.UndrainableFail, "default:image-migration (max deferrals reached)", true}},
		{"out of deferrals: not even the run's", "hermes-agent-1", 2, overrides{IdleWait: durationPtr(time.Minute)},
			want{30 * time.Minute, 0, 3 * time.Minute, policy.UndrainableFail, "default:image-migration (max deferrals reached)", true}},
		{"the run's undrainable over the policy's", "hermes-agent-1", 0, overrides{Undrainable: policy.UndrainableRecreate},
			want{30 * time.Minute, 10 * time.Minute, 3 * time.Minute, policy.UndrainableRecreate, "default:image-migration", true}},
		{"the run's undrainable over a rule's", "legacy-1", 0, overrides{Undrainable: policy.UndrainableFail},
			want{30 * time.Minute, 10 * time.Minute, 3 * time.Minute, policy.UndrainableFail, "legacy", false}},
		{"the run's canary bake", "hermes-agent-1", 0, overrides{CanaryBake: durationPtr(25 * time.Second)},
			want{30 * time.Minute, 10 * time.Minute, 25 * time.Second, policy.UndrainableFail, "default:image-migration", true}},
		{"the run's canary bake of 0", "hermes-agent-1", 0, overrides{CanaryBake: durationPtr(0)},
			want{30 * time.Minute, 10 * time.Minute, 0, policy.UndrainableFail, "default:image-migration", true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := policy.Machine{App: tc.app, MachineID: "m1", Region: "iad", Image: "img:v1", Deferrals: tc.deferrals}
			d := decideFor(pol, policy.ImageMigration, m, tc.ov, now)
			got := want{d.Wait, d.IdleWait, d.CanaryBake, d.Undrainable, d.Rule, d.Quiet}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			if !d.Deadline.Equal(now.Add(d.Wait)) {
				t.Errorf("deadline %s, want now + %s", d.Deadline, d.Wait)
			}
			// Everything the run does not override is the policy's.
			p := pol.Decide(policy.ImageMigration, m, now)
			if d.OnBusy != p.OnBusy || d.OnDeadline != p.OnDeadline || d.MaxDeferrals != p.MaxDeferrals || d.InWindow != p.InWindow ||
				d.Version != p.Version || d.Window != p.Window {
				t.Errorf("a setting the run does not override changed: %+v, policy %+v", d, p)
			}
		})
	}
}

// A run's overrides are the same whether read from the request (the dry
// run) or from the run CreateRun recorded (serve).
func TestRequestAndRunOverridesAgree(t *testing.T) {
	for _, req := range []RunRequest{
		{},
		{DeadlineOverride: time.Minute, IdleWaitOverride: durationPtr(0), Undrainable: policy.UndrainableRecreate, CanaryBakeOverride: durationPtr(0)},
		{IdleWaitOverride: durationPtr(5 * time.Minute), Undrainable: policy.UndrainableFail, CanaryBakeOverride: durationPtr(time.Minute)},
	} {
		// The fields CreateRun copies into the run.
		run := store.Run{DeadlineOverride: req.DeadlineOverride, IdleWaitOverride: req.IdleWaitOverride,
			Undrainable: string(req.Undrainable), CanaryBakeOverride: req.CanaryBakeOverride}
		if a, b := requestOverrides(req), runOverrides(run); a != b {
			t.Errorf("request %+v, run %+v", a, b)
		}
	}
}

func TestUndrainablePath(t *testing.T) {
	for u, want := range map[policy.Undrainable]DrainPath{
		policy.UndrainableRecreate: DrainPathRecreate,
		policy.UndrainableFail:     DrainPathFail,
		"":                         DrainPathFail, // a drain row from before the setting
	} {
		if got := undrainablePath(u); got != want {
			t.Errorf("undrainable %q: %s, want %s", u, got, want)
		}
	}
}

// probedPath is what the begin does with each answer of the drain endpoint.
func TestProbedPath(t *testing.T) {
	for _, tc := range []struct {
		r    gateway.Readiness
		u    policy.Undrainable
		want DrainPath
	}{
		{gateway.Ready, policy.UndrainableFail, DrainPathDrain},
		{gateway.Ready, policy.UndrainableRecreate, DrainPathDrain},
		{fleetcheck.NotRunning, policy.UndrainableRecreate, DrainPathNone},
		{gateway.NoDrainRoute, policy.UndrainableFail, DrainPathFail},
		{gateway.NoDrainRoute, policy.UndrainableRecreate, DrainPathRecreate},
		{gateway.NoSecret, policy.UndrainableFail, DrainPathFail},
		{gateway.NoSecret, policy.UndrainableRecreate, DrainPathRecreate},
		{gateway.NoSecretOrRoute, policy.UndrainableRecreate, DrainPathRecreate},
		{gateway.Forbidden, policy.UndrainableRecreate, DrainPathFail}, // 403 is never recreated blind
		// 400 Invalid Host header: every call through this hostname is
		// refused; the begin fails (permanent), never a recreate blind.
		{gateway.HostRejected, policy.UndrainableRecreate, DrainPathFail},
		{gateway.ServerError, policy.UndrainableRecreate, DrainPathDrain},
		{gateway.Unreachable, policy.UndrainableRecreate, DrainPathDrain},
		{gateway.Unexpected, policy.UndrainableFail, DrainPathDrain},
	} {
		if got := probedPath(tc.r, tc.u); got != tc.want {
			t.Errorf("%s with undrainable %s: %s, want %s", tc.r, tc.u, got, tc.want)
		}
	}
}

// The step's decision is decideFor's with the run's recorded overrides:
// what serve records is what the dry run shows.
func TestStepDecidesAsPreview(t *testing.T) {
	pol, err := policy.Parse("test.toml", []byte("[causes.operator]\nidle_wait = \"10m\"\nmax_deferrals = 1\non_deadline = \"defer\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 24, 3, 0, 0, 0, time.UTC)
	o := &Orchestrator{pol: pol, cfg: Config{}.withDefaults()}
	o.cfg.Clock = fixedClock{now}
	for _, req := range []RunRequest{
		{Cause: policy.Operator},
		{Cause: policy.Operator, DeadlineOverride: 2 * time.Minute, IdleWaitOverride: durationPtr(time.Minute),
			Undrainable: policy.UndrainableRecreate, CanaryBakeOverride: durationPtr(30 * time.Second)},
	} {
		for deferrals := range 2 {
			run := store.Run{Cause: string(req.Cause), DeadlineOverride: req.DeadlineOverride, IdleWaitOverride: req.IdleWaitOverride,
				Undrainable: string(req.Undrainable), CanaryBakeOverride: req.CanaryBakeOverride}
			s := &step{o: o, w: store.MachineWork{Run: run, Migration: store.Migration{App: "a", MachineID: "m", Deferrals: deferrals, Canary: true}}}
			s.m = &s.w.Migration
			serve := s.decide("iad", "img:v1", nil)
			preview := decideFor(pol, req.Cause, policy.Machine{App: "a", MachineID: "m", Region: "iad", Image: "img:v1",
				Deferrals: deferrals}, requestOverrides(req), now)
			if serve != preview {
				t.Errorf("deferrals %d, request %+v:\nserve   %+v\npreview %+v", deferrals, req, serve, preview)
			}
			if s.canaryBake() != preview.CanaryBake {
				t.Errorf("canary bake: serve %s, preview %s", s.canaryBake(), preview.CanaryBake)
			}
		}
	}
}

// fixedClock stands still at t.
type fixedClock struct{ t time.Time }

func (c fixedClock) Now() time.Time                   { return c.t }
func (fixedClock) Wall(d time.Duration) time.Duration { return d }

// IdleWaitEnds is the idle step's own deadline (first look + the
// decision's idle wait), from the same decision: the run's override, none
// once the deferrals are used up, none before the first look.
func TestIdleWaitEnds(t *testing.T) {
	pol, err := policy.Parse("test.toml", []byte(`
[causes.env-edit]
idle_wait = "10m"
on_busy = "defer"
max_deferrals = 2
`))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	o := &Orchestrator{pol: pol, cfg: Config{Clock: fixedClock{now}}}
	first := now.Add(-3 * time.Minute)
	for _, tc := range []struct {
		name string
		run  store.Run
		m    store.Migration
		want time.Time
	}{
		{"the policy's idle wait", store.Run{Cause: "env-edit"}, store.Migration{App: "a", FirstPeekAt: first}, first.Add(10 * time.Minute)},
		{"the run's override", store.Run{Cause: "env-edit", IdleWaitOverride: durationPtr(time.Minute)}, store.Migration{App: "a", FirstPeekAt: first}, first.Add(time.Minute)},
		{"deferrals used up: drained at once", store.Run{Cause: "env-edit"}, store.Migration{App: "a", FirstPeekAt: first, Deferrals: 2}, time.Time{}},
		{"not looked at yet", store.Run{Cause: "env-edit"}, store.Migration{App: "a"}, time.Time{}},
	} {
		if got := o.IdleWaitEnds(tc.run, tc.m); !got.Equal(tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
