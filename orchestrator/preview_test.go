package orchestrator_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hermes-cloud/migrator/internal/fleetcheck"
	"github.com/hermes-cloud/migrator/internal/gateway"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// previewFleet: hermes-agent-1 has no drain route (404), hermes-agent-2 no
// drain secret (401), hermes-agent-3 is ready and out of deferrals,
// hermes-agent-4 is ready, hermes-agent-5 is stopped, hermes-agent-6 is on
// a host that is not ok.
func previewFleet() fleetsim.Config {
	cfg := enrolFleet()
	cfg.Apps = 6
	cfg.Shape = func(app string) []fleetsim.MachineShape {
		switch app {
		case "hermes-agent-5":
			return []fleetsim.MachineShape{{State: "stopped"}}
		case "hermes-agent-6":
			return []fleetsim.MachineShape{{HostStatus: "unreachable"}}
		}
		return nil
	}
	return cfg
}

const previewPolicy = `
[causes.image-migration]
idle_wait = "30s"
on_busy = "drain"
on_deadline = "defer"
max_deferrals = 1
canary_bake = "10s"

[[rules]]
name = "loud-three"
app_prefix = "hermes-agent-3"
quiet = false
wait = "45m"
`

// The dry run is what serve does: a run's Preview, then the same run
// executed by serve, machine by machine. What serve records (the drain's
// quiet flag, rule, deadline, undrainable setting; the idle wait; the
// canary's bake; the drain outcome; the launch; a deferral for a host that
// is not ok) is what the Preview said, with the run's overrides and
// without. A rule changed on one path only (serve's or the dry run's)
// fails here.
func TestPreviewIsWhatServeDoes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		req  orchestrator.RunRequest
	}{
		{"the policy's", orchestrator.RunRequest{Canary: 1}},
		{"the run's overrides", orchestrator.RunRequest{Canary: 1, DeadlineOverride: 90 * time.Second,
			IdleWaitOverride: durationPtr(time.Minute), Undrainable: policy.UndrainableRecreate,
			CanaryBakeOverride: durationPtr(20 * time.Second)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, worldOpts{sim: previewFleet(), policy: mustPolicy(t, previewPolicy)})
			ctx := context.Background()
			// Drain history makes hermes-agent-4 (ready) the quickest, so
			// the canary; hermes-agent-3 was deferred since: out of
			// deferrals.
			hist := []struct {
				app, outcome string
				days         int
				drain        int // seconds; 0: no drain
			}{{"hermes-agent-4", "migrated", 2, 5}, {"hermes-agent-1", "migrated", 2, 100}, {"hermes-agent-3", "deferred", 1, 0}}
			for _, h := range hist {
				if _, err := w.st.Pool().Exec(ctx, `
					WITH r AS (
						INSERT INTO runs (cause, target_image, image, selector, max_unavailable, requested_by, state, created_at)
						VALUES ('image-migration', 'img:v1', 'img:v1', '{}', 1, 'test', 'succeeded', now() - make_interval(days => $4))
						RETURNING id, created_at
					), m AS (
						INSERT INTO machine_migrations (run_id, seq, app, machine_id, region, to_image, from_image, state, outcome, created_at)
						SELECT r.id, 0, $1, $2, 'iad', 'img:v1', 'img:v0', 'done', $3, r.created_at FROM r
						RETURNING id, created_at
					)
					INSERT INTO drains (migration_id, quiet, policy_rule, policy_version, on_deadline, decided_at, deadline_at,
						started_at, quiesced_at, outcome)
					SELECT m.id, true, 'r', 'v', 'force', m.created_at, m.created_at + interval '1 hour', m.created_at,
						m.created_at + make_interval(secs => $5), 'quiesced'
					FROM m WHERE $5 > 0`, h.app, w.sim.MachineIDs(h.app)[0], h.outcome, h.days, h.drain); err != nil {
					t.Fatal(err)
				}
			}
			req := tc.req
			// The failures the policy's undrainable = fail makes must not
			// pause the run before the rest is compared.
			req.Cause, req.Image, req.MaxUnavailable, req.RequestedBy, req.FailureThreshold = policy.ImageMigration, imgV2, "6", "test", 6
			req.Selector = store.Selector{Org: w.sim.Org()}
			plan, err := w.owner.PlanRun(ctx, req.Selector, req.Image, req.Canary)
			if err != nil {
				t.Fatal(err)
			}
			req.Excluded = plan.Excluded
			gw, err := gateway.New(gateway.Config{URLTemplate: w.sim.GatewayURLTemplate(), DrainKey: w.sim.DrainKey()})
			if err != nil {
				t.Fatal(err)
			}
			pv, err := w.owner.Preview(ctx, req, plan.Machines, fleetcheck.Prober{Gateway: gw})
			if err != nil {
				t.Fatal(err)
			}
			if !pv.Probed || len(pv.Machines) != 6 || pv.PolicyVersion != w.pol.Version() {
				t.Fatalf("preview: probed %t, %d machines, policy %s", pv.Probed, len(pv.Machines), pv.PolicyVersion)
			}
			run, _, err := w.owner.CreateRun(ctx, req, plan.Machines)
			if err != nil {
				t.Fatal(err)
			}
			w.waitRun(run.ID, time.Minute)

			byMachine := map[string]orchestrator.MachinePreview{}
			for _, m := range pv.Machines {
				byMachine[m.ID] = m
			}
			canaries := 0
			for _, got := range w.recorded(run.ID) {
				m := got.w.Migration
				p, ok := byMachine[m.MachineID]
				if !ok || p.Decision == nil {
					t.Fatalf("%s/%s: not in the preview, or no decision: %+v", m.App, m.MachineID, p)
				}
				d := p.Decision
				if p.Deferrals != m.Deferrals {
					t.Errorf("%s: preview %d deferrals, serve %d", m.App, p.Deferrals, m.Deferrals)
				}
				if !p.HostOK {
					// Refused in ready: deferred, never leased nor drained.
					if m.Outcome != store.OutcomeDeferred || got.w.Drain != nil {
						t.Errorf("%s: host not ok in the preview; serve: %s, drain %+v", m.App, m.Outcome, got.w.Drain)
					}
					continue
				}
				dr := got.w.Drain
				if dr == nil {
					t.Fatalf("%s: no decision recorded (outcome %s, %s)", m.App, m.Outcome, m.Error)
				}
				if dr.Quiet != d.Quiet || dr.PolicyRule != d.Rule || dr.PolicyVersion != d.Version || dr.OnDeadline != string(d.OnDeadline) ||
					dr.MaxDeferrals != d.MaxDeferrals || dr.Undrainable != string(d.Undrainable) || dr.DeadlineAt.Sub(dr.DecidedAt) != d.Wait {
					t.Errorf("%s: serve decided quiet %t, rule %q (%s), on_deadline %s, max_deferrals %d, undrainable %s, wait %s;\npreview %+v",
						m.App, dr.Quiet, dr.PolicyRule, dr.PolicyVersion, dr.OnDeadline, dr.MaxDeferrals, dr.Undrainable,
						dr.DeadlineAt.Sub(dr.DecidedAt), d)
				}
				if got.idleWait != d.IdleWait.String() {
					t.Errorf("%s: serve's idle wait %s, preview %s", m.App, got.idleWait, d.IdleWait)
				}
				if m.Launch == p.LeftDown {
					t.Errorf("%s: serve launch %t, preview left down %t", m.App, m.Launch, p.LeftDown)
				}
				switch path := pathOf(p); path {
				case orchestrator.DrainPathNone:
					if dr.Outcome != store.DrainNotRunning || m.Outcome != store.OutcomeMigrated {
						t.Errorf("%s: preview %s; serve: drain %s, %s", m.App, path, dr.Outcome, m.Outcome)
					}
				case orchestrator.DrainPathRecreate:
					if dr.Outcome != store.DrainUndrainable || m.Outcome != store.OutcomeMigrated {
						t.Errorf("%s: preview %s; serve: drain %s, %s", m.App, path, dr.Outcome, m.Outcome)
					}
				case orchestrator.DrainPathFail:
					if !dr.StartedAt.IsZero() || m.Outcome != store.OutcomeFailed {
						t.Errorf("%s: preview %s; serve: drain %s (begun %t), %s", m.App, path, dr.Outcome, !dr.StartedAt.IsZero(), m.Outcome)
					}
				case orchestrator.DrainPathDrain:
					if dr.Outcome != store.DrainQuiesced || m.Outcome != store.OutcomeMigrated {
						t.Errorf("%s: preview %s; serve: drain %s, %s", m.App, path, dr.Outcome, m.Outcome)
					}
				}
				if (p.CanaryBake != nil) != m.Canary {
					t.Errorf("%s: canary %t, preview bake %v", m.App, m.Canary, p.CanaryBake)
				}
				if m.Canary && m.Outcome == store.OutcomeMigrated {
					canaries++
					if got.bake != p.CanaryBake.String() {
						t.Errorf("%s: serve baked %q, preview %s", m.App, got.bake, p.CanaryBake)
					}
				}
			}
			if canaries != 1 {
				t.Errorf("%d canaries baked, want 1", canaries)
			}

			// Planned again, the machines serve moved are up to date: no
			// decision, no probe.
			again, err := w.owner.PlanRun(ctx, req.Selector, req.Image, 0)
			if err != nil {
				t.Fatal(err)
			}
			pv, err = w.owner.Preview(ctx, req, again.Machines, nil)
			if err != nil {
				t.Fatal(err)
			}
			upToDate := 0
			for _, m := range pv.Machines {
				if m.UpToDate {
					upToDate++
					if m.Decision != nil || m.Probe != nil || m.CanaryBake != nil {
						t.Errorf("%s: up to date, yet %+v", m.App, m)
					}
				} else if m.Probe != nil {
					t.Errorf("%s: probed without a prober", m.App)
				}
			}
			if upToDate == 0 || pv.Probed {
				t.Errorf("second preview: %d up to date, probed %t", upToDate, pv.Probed)
			}
		})
	}
}

// pathOf is the drain path the preview shows for a machine on an ok host.
func pathOf(p orchestrator.MachinePreview) orchestrator.DrainPath {
	if !p.Drained {
		return orchestrator.DrainPathNone
	}
	return p.Probe.Path
}

func durationPtr(d time.Duration) *time.Duration { return &d }

// recordedMachine is what serve recorded for one machine of a run: its
// rows, the idle wait of its (last) decision and its canary bake.
type recordedMachine struct {
	w              store.MachineWork
	idleWait, bake string
}

func (w *world) recorded(runID int64) []recordedMachine {
	w.t.Helper()
	ctx := context.Background()
	rows, err := w.st.Pool().Query(ctx, `
		SELECT m.id,
			coalesce((SELECT e.detail->>'idle_wait' FROM events e WHERE e.migration_id = m.id AND e.detail ? 'idle_wait' ORDER BY e.id DESC LIMIT 1), ''),
			coalesce((SELECT e.detail->>'bake' FROM events e WHERE e.migration_id = m.id AND e.kind = 'machine.baking' ORDER BY e.id DESC LIMIT 1), '')
		FROM machine_migrations m WHERE m.run_id = $1 ORDER BY m.seq`, runID)
	if err != nil {
		w.t.Fatal(err)
	}
	type row struct {
		id             int64
		idleWait, bake string
	}
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		return x, r.Scan(&x.id, &x.idleWait, &x.bake)
	})
	if err != nil {
		w.t.Fatal(err)
	}
	var out []recordedMachine
	for _, r := range got {
		mw, err := w.st.Q().LoadMachineWork(ctx, r.id)
		if err != nil {
			w.t.Fatal(err)
		}
		out = append(out, recordedMachine{w: mw, idleWait: r.idleWait, bake: r.bake})
	}
	return out
}
