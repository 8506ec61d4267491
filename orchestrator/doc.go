// Package orchestrator moves machines to a new image: it plans runs, keeps
// the disruption budget, and walks each machine through its migration as a
// River job that is safe to run twice and safe to kill at any point.
//
// # Runs and the budget
//
// A run (store.Run) is created with its whole plan: one machine migration per
// selected machine, those already on the image recorded skipped_up_to_date
// at once. A machine is "disrupted" from the moment it holds a budget slot
// until it is done. Slots are handed out by store.Q.FillSlots, under one
// Postgres advisory lock, so every replica and every run sees the same count:
// at most the run's max_unavailable per run and Config.FleetCap fleet-wide.
// A machine that finishes gives its slot back and, in the same transaction,
// the next pending machine gets it and its job is inserted (greedy refill:
// no wave waits for its slowest member). A periodic fill job is the safety
// net for machines whose not_before passed. Canaries go first; the rest
// wait until every canary migrated; a failed canary, or more failures than
// the run's threshold, pauses the run.
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
//	pending ──slot──▶ ready ──read, lease, decide──▶ decided ──begin drain──▶ draining
//	   ▲                │                                                    │
//	   └─lease held─────┤ (up to date: skipped_up_to_date;                    │ quiescent, gateway down,
//	                    │  outside window: deferred)                         │ or deadline + force
//	                    ▼                                                    ▼
//	                  done ◀──migrated── verifying ◀──update image── updating
//	                    ▲                    │
//	                    └──rolled_back── rolling_back (not started / revert / unhealthy / not serving)
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
// least the app secrets version `secret sync` last recorded
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
// Verification reads the machine once per poll (instance, image and checks
// in one call), waiting on Fly's /wait only while the new instance is still
// on its way; health results count only if newer than Fly's own update
// time, and the gateway must report running or degraded.
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
package orchestrator
