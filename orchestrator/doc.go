// Package orchestrator moves machines to a change: it plans runs, keeps
// the disruption budget, and walks each machine through its migration as a
// River job that is safe to run twice and safe to kill at any point.
//
// # The change
//
// A run moves its machines to one change (change.go): a new image; env
// variables set or unset in config.env; an app secrets version to pick up
// (min_secrets_version); a restart (an update of the unchanged config: a
// new instance); any combination, at least one. Without an image each
// machine keeps the digest it runs (image_ref, resolved in ready). Up to
// date is judged against the whole change in ready (judgeChange); the
// update applies it to the config as read under the lease (changeOptions,
// after recording the env before, sealed); verify checks it with the new
// instance and the image (envApplied); a rollback puts back the image
// that ran and the env keys as they were (envRestore), never app secrets
// (Fly keeps only the newest: the event and the notification say so); a
// change with nothing to put back (a restart, secrets alone) ends failed
// instead. CreateRun is the one way a run is made (the CLI, the
// auto-update, an API): ValidateRequest refuses bad input with a
// *FieldError naming the field, and env values are kept only sealed
// (Config.Sealer) until the run ends.
//
// # Runs and the budget
//
// A run (store.Run) is created with its whole plan: one machine migration per
// selected machine, those already on the image recorded skipped_up_to_date
// at once. A machine is "disrupted" from the moment it holds a budget slot
// until it is done. Slots are handed out by store.Q.FillSlots, under one
// Postgres advisory lock, so every replica and every run sees the same count:
// at most the run's max_unavailable per run and Config.FleetCap fleet-wide
// (a run of a customer cause counts against the customer lane's cap
// instead, policy budget_lane, recomputed by CreateRun from the fleet's
// size). One machine, one migration at a time across runs: a machine
// another run holds, or has pending ahead of it (a customer run's before
// a fleet run's, else the older run's), waits; a customer's change and a
// fleet run's image past its canaries, due together, go in one recreate
// whose end ends the fleet run's migration too (store.Q.FillSlots,
// SettleCombined).
// A machine that finishes gives its slot back and, in the same transaction,
// the next pending machine gets it and its job is inserted (greedy refill:
// no wave waits for its slowest member). A periodic fill job is the safety
// net for machines whose not_before passed. Canaries go first; the rest
// wait until every canary migrated (after its bake, below); a failed
// canary, or more failures than the run's threshold, pauses the run. A
// person resuming a paused run acknowledges what failed so far (the run's
// acknowledged_at): the gate opens past those canaries and the threshold
// counts afresh; `run resume --bake` first moves and bakes new canaries.
// A canary that ends without proving the image (deferred: outside its
// window, its agent never idle, its host not ok, another deployer's lease;
// or found up to date) does not hold the gate: in the transaction that
// ends it, the next pending machine in plan order becomes a canary in its
// place (store.Q.ReplaceUnprovenCanary); once more than
// store.MaxUnprovenCanaries × the canary count ended so, the run pauses
// naming them.
//
// # Plan order
//
// Refill is greedy and cannot know how long a drain will wait until it is
// quiescent; with heavy-tailed waits the makespan is set by whichever long
// drain starts last. So Plan orders the machines to move longest expected
// drain first (an LPT order), the expectation being the mean of the
// machine's last five drain waits in this database (store.Q.DrainEstimates;
// a machine without any ranks as the fleet's mean), and records it as the
// machine's expected_drain. Canaries are the machines with the shortest
// expected drains: the canary gate holds every other machine back, and a
// canary proves the image, not the drain. A fleet never migrated before is
// planned in app and machine order. The order is fixed when the run is
// created; FillSlots follows it (canaries first, then seq).
//
// # The per-machine state machine
//
//	pending ──slot──▶ ready ──read, peek, look for a lease, decide──▶ decided ──begin drain──▶ draining
//	   ▲                │   │                                                          │
//	   ├─lease held─────┤   └──not running: no drain (a canary: woken)───────┐           │ quiescent, gateway down,
//	   ├─agent busy─────┤ (up to date: skipped_up_to_date;                   │           │ machine down, or
//	   ├─woken (from    │  outside window, host not ok, stuck in a           │           │ deadline + force
//	   │  updating)     │  transient state: deferred;                        ▼           ▼
//	   └─lease held at  │  never idle within idle_wait, on_busy defer)   updating ◀────────┘
//	      the update    │                                                   │ take the lease, read again
//	      (drain        │                                                   │ under it, update image
//	      cancelled)    ▼                                                   ▼
//	                  done ◀──migrated──────────────────────────────── verifying
//	                   ▲ ▲ ▲   ▲                                       │   │ canary, bake > 0
//	                   │ │ │   └──clean─── baking ◀────────────────────┘   │ (lease given back)
//	                   │ │ │                  │ regression (run paused)    │
//	                   │ │ │                  ▼                            │ startup_failed, failed,
//	                   │ │ └──rolled_back── rolling_back ◀─────────────────┘ crashed, or undecided
//	                   │ │   (drain cancelled, │  (lease taken again)          by VerifyTimeout
//	                   │ │    gateway serving) │
//	                   │ └──────failed─────────┘ (rollback impossible, or the agent does not
//	                   │                          serve on the old image by VerifyTimeout)
//	                   └──any outcome── putting_down ◀── verifying, baking, rolling_back:
//	                                    (a woken canary: suspended or stopped as it was)
//
// A machine read in a transient state (starting, restarting, replacing,
// updating, creating, stopping, suspending) is waited out in ready or
// updating, for at most Config.TransientWait, never taken for down.
//
// # A real fleet: one launch decision, what ran, who else deploys
//
// In ready the machine is read (without a lease: a drain changes nothing
// on Fly), and what it is then is what everything is decided from, once,
// and recorded (machine_state, launch, from_digest, from_image_ref, the
// Fly release it runs) before anything changes. flyctl decides the same
// way, from the machine as captured before its deploy
// (internal/command/deploy/plan.go). The lease is taken in updating, just
// before the update, and the machine read again under it (unless Fly
// granted it on the very instance the drain began on): another instance or
// image is someone else's deploy, and the machine is not moved over it.
//
//   - Started: drained, then updated with a launch; verified by instance,
//     image, checks and the gateway serving.
//   - A canary that is stopped, suspended or created (on a host that is
//     ok): a canary proves the image only by running it. No drain (nobody
//     is on it); its update launches the new image (woke_from); verified
//     and baked as any canary, then put back down the way it was
//     (putting_down: suspended if it was and Fly allows it, else stopped),
//     whatever its outcome (step_wake.go). A canary moved with skip_launch
//     would never count as proof (store.UnprovenCanary).
//   - Stopped, suspended (or created), not a canary: nobody is on it. No
//     drain, no gateway call: decided goes straight to updating with the
//     drain outcome not_running, the update carries skip_launch, and it is
//     verified by state and config (the new instance, the new image,
//     resting down); a rollback leaves it down too. If Fly Proxy starts
//     it for a user before the update is sent, the adapter refuses to
//     send it (flymachines.IfStillDown: an update with skip_launch would
//     stop that user's agent undrained) and the machine goes back to
//     pending to be decided again, as a running one. If the proxy starts
//     it after the update, on the new instance, it is verified as a
//     launched machine.
//   - Failed: launched (flyctl's rule), not drained.
//   - A machine that goes down during its drain (autostop, or the agent
//     suspending itself when idle): the drain ends not_running and the
//     update follows with the launch decided at ready.
//   - A new instance put down on request during its verification, the
//     rollback's or a canary's bake (autostop's stop, whose exit event
//     says requested_stop; a suspend; Hermes's scale-to-zero) is asleep,
//     not broken: judged on what it showed while up, and started once if
//     it never showed its platforms (asleep.go: one rule for verify,
//     restore and the bake).
//
// What ran is image_ref, not config.image (a tag that may have moved): its
// digest and full reference are recorded under the lease, and a rollback
// sends exactly that reference (store.Migration.RollbackImage, the one
// place the rollback's image is chosen); the machine counts as back only
// on that digest. to_digest records what runs when the migration ends.
//
// A machine whose host is not ok (host_status unknown or unreachable:
// only an incomplete config, calls fail) is never leased or drained:
// deferred, the next run picks it up. A host lost after the update is
// read again each poll; past VerifyTimeout the machine fails with that
// reason (neither verified nor rolled back while calls cannot reach it).
//
// The lease is held only to change the machine: from just before the
// update through verify and rollback (and a woken canary's put-down), not
// during a drain (up to the policy's wait, hours) nor a bake: every `fly
// deploy`, `fly secrets set` or `fly machine update` of the app would fail
// on "lease currently held by" after flyctl's minute of retries. A lease
// another deployer holds (a person's `fly deploy`: 13-s leases refreshed
// every 4 s; other flyctl commands: 120 s) is looked for in ready
// (FindLease) before a drain is begun, and met again at the update: it is
// waited out, the slot going back until the expiry the 409 states (RFC
// 3339 or Go's time form) or FindLease reports, for at most
// Config.LeaseWait from the first; at the update the drain is cancelled
// meanwhile (the agent takes turns again) and the machine decided again
// after; past the bound it is deferred naming the holder
// (lease_wait_since/owner/ended_at). A lease that is not ours is never
// touched. If the holder changed the machine meanwhile (its instance is
// not the one read before the wait), migrator does not move it in this
// run: deferred, with what changed. So is a machine someone deployed
// during its drain (the drain falls out of "draining" on their new
// instance; or the re-read under the lease shows it): the drain is
// cancelled. One taken again after ours lapsed is checked the same way.
//
// A Fly release is recorded per run and app for the image (release.go):
// fly_release_id and fly_release_version go into each update's
// config.metadata, as `fly deploy` writes them, and the release is
// finished complete, failed or interrupted by the fill tick once the
// app's machines are done; a token Fly's GraphQL API refuses moves
// machines all the same, without releases.
//
// Plans leave out release-command and console machines (fly-go's
// IsReleaseCommandMachine, IsFlyAppsConsole) and destroyed ones, and
// multi-container machines unless the selector names a container (then
// that container's image is what the run moves, as `fly machine update
// --container`); run.created lists what was left out and why. A machine
// that turns out to be one of those when its turn comes is refused, never
// half updated.
//
// # Idle-first begin
//
// A drain refuses every new user turn while it lasts, so a machine whose
// decision has an idle wait (policy idle_wait, or the run's --idle-wait) and
// whose machine is started is drained only at a moment its agent is idle.
// In ready, after reading the machine and before leasing it, the step
// reads the agent's /api/status (a peek). active_agents > 0 (or the gateway
// still "starting"): the machine goes back to pending in the same write
// that gives its slot back (slot_held false; the commit refills the slot
// for the next candidate, so a waiting machine is never counted as
// disrupted), with not_before = now + a back-off (PollInterval doubling up
// to PeekBackoffMax, ±20 %, never past the idle wait's end; at most
// PeekBackoffTail once no machine of the run waits for a slot, the run's
// tail) and idle_watch set: its own job snoozes until then and looks again
// without a slot (FillSlots leaves a watching machine alone), so a busy
// agent costs one status read and one single-statement write per look.
// The look that finds it idle takes a free slot at once (store.ClaimSlot,
// under the budget's lock and rules) and goes on to lease and begin in the
// same execution; with no slot free, idle_watch is cleared and it waits for
// one in plan order (FillSlots; ready looks again). The fill tick inserts
// the job of a watch whose look is overdue (a lost job). Idle (or the
// gateway not running at all: nobody is being served) → lease, record the
// decision (active_agents_at_begin from the peek) and begin at once.
//
// A drain begun at an idle moment is read every 250 ms in the execution
// that began it, until the gateway shows the marker (hermes-agent's watcher
// re-reads it every second) — not after a snooze that River's fetch poll
// makes up to a second longer — and the update follows that read at once:
// from the watcher noticing to the SIGTERM every new turn is refused. If
// that first "draining" read shows work in flight, turns began between the
// idle look and the watcher noticing: they are served, and the drain is
// cancelled at once rather than refusing the agent's next turns while it
// waits for them; the machine watches for the next idle moment within the
// same idle wait (past it, the drain waits for them as without one).
//
// With the decision's IdleQuietFor (policy idle_quiet_for), a look that
// finds nothing in flight is an idle moment only once the agent showed
// nothing in flight that long: where /api/status has active_sessions, it
// must be 0 (no session active for 300 s: a turn that came and went
// between two looks shows there); an older Hermes without it needs every
// look since quiet_since to find nothing in flight, quiet_since being
// IdleQuietFor ago; until then the machine
// goes back to pending without its slot, as when busy, and looks again
// when the quiet would be shown (background work is not in active_agents;
// hermes_features.go). A drain not begun at such a moment waits as long
// once it is quiescent (quiesced_at is when it became so), up to its
// deadline.
//
// The idle wait counts from the first peek (first_peek_at, kept across
// looks, leases held elsewhere and replica crashes: it is in Postgres).
// When it is over and the agent is still busy: on_busy = "drain" begins
// anyway; "defer" ends the machine deferred, never drained (no drain row),
// with the last active_agents in its error; the deferral counts toward
// max_deferrals and, once they are used, the decision has no idle wait
// (drain at once, force at the deadline). A status that cannot be read is
// not taken for idle: the machine backs off as if busy, and if the status
// is still unreadable when the idle wait ends it goes on to the begin,
// which retries an unreachable gateway for GatewayGrace and then fails the
// machine, as without an idle wait (a broken dashboard is neither drained
// blind nor deferred in silence).
//
//	decided ──drain POST 404/401 and undrainable=recreate (no drain)──▶ updating
//
// A drain POST answered 404 (no drain route: an older Hermes) or 401 (no
// drain secret, or another one) fails the machine, unless the decision's
// undrainable is "recreate" (policy setting, or the run's override from
// `run create --undrainable recreate`): then decided goes straight to
// updating, the drain outcome is "undrainable" with the status in the
// machine's error, and the shutdown is loud (no marker). 403, 5xx and an
// unreachable dashboard never take that path. Every update asks Fly for at
// least the app secrets version `secret sync` last recorded and the run's
// (min_secrets_version), since a machine sees app secrets only when it is
// recreated.
//
// Each arrow is one write (store.Q.SaveStep: a single statement, or a
// transaction when the machine frees its budget slot) of the machine's row
// (guarded by its version, so a second execution of the same job cannot
// overwrite the first), its drain row, the external calls made for it and a
// transition event. Successful status reads that change nothing are not
// logged one by one (a thousand waiting drains would write hundreds of rows
// a second); every read that changes something is, with what it saw. The
// policy decision (quiet, rule, deadline) is committed before the gateway
// is called, and a re-delivered job begins again with exactly that
// recorded flag. The update is never preceded by a cancel of the drain: the
// marker must be on the volume at SIGTERM for a quiet drain to stay quiet.
// Every way out before the update (cancel, defer at the deadline, failure)
// cancels the drain, so the agent takes turns again.
//
// What the agent's Hermes version lacks (internal/hermes's table;
// hermes_features.go) is applied before the decision is recorded, from the
// version the look before it read (else one status read then): a quiet
// decision for a Hermes that ignores suppress_notification is recorded and
// sent loud; a Hermes that counts no cron work is flagged
// (hermes.cron_unseen); and a rollback onto a Hermes without boot
// self-heal is not attempted (the machine fails, left on the new image:
// after this drained stop that Hermes would not start its gateway).
//
// Verification reads the machine once per poll (instance, image, checks and
// events in one call), waiting on Fly's /wait only while the new instance
// is still on its way; health results count only if newer than Fly's own
// update time, and the gateway must report running or degraded. Then the
// agent is judged against its own before (judgeAgent): the signals it
// showed before its drain (the last peek, or the first status read of the
// drain) are kept on the machine (signals_before), and after the recreate
// every platform that was up must be up again within VerifyTimeout (one
// that was already down does not count) and a Nous session that was valid
// must not be terminal. A definitive failure rolls back at once instead of
// waiting out VerifyTimeout (which stays for the undecided: still
// starting, checks not yet passing, a platform still retrying): the
// machine settled on another instance (flyd's revert), the new instance's
// machine is failed or stopped, a Fly exit event after the update that was
// not asked for (flyd's restart policy may have hidden the crash from the
// machine's state), its gateway reports startup_failed, a platform that was
// up is parked (fatal, or retrying past needs_attention), or the Nous
// session turned terminal. The deciding signal (deciding_signal) and the
// signals seen (signals_after) are recorded with the rolling_back
// transition.
//
// # The canary bake
//
// A canary that verified is "baking" for its bake (policy canary_bake, or
// the run's --canary-bake), keeping its slot (not its lease: the bake
// changes nothing; a rollback takes it again), so the canary gate holds
// the rest. Each poll reads its machine (Fly events newer than the
// update, still on the new instance and started) and its /api/status (the
// gateway running, no platform or Nous regression against the before); at
// the end, a platform that was up must be up. A regression moves the
// canary to rolling_back (the same rollback as verify's) and pauses the run
// in the same transaction, naming the machine and the signal. bake_until is
// in Postgres, so a replica killed mid-bake leaves the rest of the bake to
// the next. A cancelled run ends its baking canaries migrated. A canary
// put down while idle during its bake (suspended, or stopped with a
// requested stop: Fly Proxy's autostop, Hermes suspending itself) is not a
// regression: the bake watches Fly's events to its end and judges what the
// agent showed while up (asleep.go). A machine someone else updated during
// the bake (another instance, another image) ends deferred, unproven.
// Canaries are picked among running machines on a host that is ok, then
// among sleeping ones, which are woken to run the image and put back down
// (step_wake.go); a canary migrated without running the image (skip_launch)
// never opens the gate.
//
// # Every way out leaves the agent serving
//
// A rollback ends only when the machine runs the old image and its agent
// serves again. flyd may keep (or put back) the old instance without ever
// stopping it — same process, same epoch — and that instance still holds
// the drain marker and refuses every turn; so once the machine is back on
// the old image the drain is cancelled (after a rollback that recreated the
// machine the marker is stale and the cancel only removes it) and the
// gateway must report running or degraded, both recorded; a gateway that
// was not serving before the update (the drain found it down) is not waited
// for. Past VerifyTimeout an agent that does not serve on the old image
// ends failed, as does a rollback that cannot be sent; either tries to
// cancel the drain first.
//
// The Fly lease's description names the machine migration and says how to
// let it go ("migrator run R migration M (hermes-cloud control plane);
// release: migrator run cancel R, or fly machine leases clear"). A replica that dies after Fly granted the lease but before
// its nonce was saved leaves the lease behind; the next attempt's 409 is
// followed by one read of the lease (Fly shows the nonce to any holder of
// the token) and a lease with this migration's description is adopted, not
// waited out (or, if the run was cancelled meanwhile, released). A lease
// with any other description is never touched. The
// release at the end is retried on transient failures (the adapter's
// bounded back-off, a 429 after its Retry-After), on a deadline detached
// from the step's so that a replica shutting down still releases; a release
// that finally fails is recorded (machine.lease_release_failed) and the
// lease expires by itself.
//
// Waiting is a River snooze: an execution takes every step that needs no
// waiting, then returns how long to wait. The periodic fill job re-inserts a
// job for every machine on its path; River's uniqueness makes that a no-op
// unless a job was lost. A replica killed mid-step leaves
// its job "running" until River's rescuer hands it to another replica (see
// the tuning in orchestrator.go); the step it repeats is idempotent because
// each external effect is either naturally idempotent (begin, cancel,
// release) or checked against the machine first (the update re-reads the
// machine and skips when it already runs the image).
//
// # Where the code is
//
// One file per state of the per-machine state machine above, each opening
// with what its step does and which states it moves between:
//
//	pending (idle watch)  step_idle.go      peek, watchIdle: looks for an idle moment
//	ready                 step_ready.go     read, refuse, decide, record the decision
//	                      step_lease.go     take, adopt, wait out, refresh, release the lease
//	decided, draining     step_drain.go     begin, poll, undrainable, slipped turns
//	updating              step_update.go    the recreate on the change
//	verifying             step_verify.go    the new instance and its agent judged
//	baking                step_bake.go      a canary watched before the run widens
//	rolling_back          step_rollback.go  the old image and env back, the agent serving
//	putting_down          step_wake.go      a woken canary put back down
//	done                  step.go           finish: the lease released, the slot refilled
//
// asleep.go is the one rule for an instance put down on request (verify,
// restore, bake); release.go the Fly release per run and app.
//
// worker.go is the River worker and the dispatch on the state (advance);
// step.go what every step shares (the step, its writes, the ways a machine
// ends, the machine-state predicates). change.go is what a change does
// to a machine's config and whether a machine already has it (the steps
// call it; the sealed values and the rules across runs are in
// store/change.go). decision.go is the policy's decision
// with the run's overrides applied (decideFor) and the drain path of an
// undrainable agent: the steps take them from there, and so does
// preview.go, the dry run (Preview: what a run would do with each machine,
// which `run create --dry-run` only renders). hermes_features.go is what an
// agent's Hermes version changes, and the quiet rule of idle_quiet_for,
// shared by the idle look, the drain and the dry run. Around the state machine: plan.go
// plans and creates runs (plan order, exclusions), orchestrator.go wires
// River and the budget's fill job, signals.go judges an agent against its
// own before, autoupdate.go is the periodic auto-update, metrics.go the
// Observer, ports.go the interfaces of Fly, the gateway and the policy
// this package needs, config.go the tuning.
package orchestrator
