// Package store is migrator's record in Postgres: what each run asked for,
// where every machine is on its path, what was decided and done for it,
// and why. Every replica of `migrator serve` and every CLI command shares
// it; the queries are typed methods of Q, each one parameterized.
//
// # The model
//
//   - A run (runs, Run) is one request to move a set of machines to one
//     image for one cause, created running with its whole plan
//     (Q.CreateRun). Its RunState ends succeeded, failed or cancelled
//     (cancelling while machines in flight finish), and is paused when a
//     person has to act (a failed canary, the failure threshold, a pause).
//     (pending is the column's default; Q.CreateRun records a run
//     running.)
//   - A machine migration (machine_migrations, Migration) is one machine's
//     path through a run: a MigrationState from pending to done, then an
//     Outcome (migrated, rolled_back, failed, deferred, cancelled,
//     skipped_up_to_date). Deferrals carry over from the machine's earlier
//     runs, so the policy can force it after max_deferrals.
//   - A drain (drains, Drain) is the policy decision recorded for a
//     machine migration before the gateway hears of it, and what its drain
//     did; its DrainOutcome says how it ended (quiesced, deadline_forced,
//     undrainable, not_running, …).
//   - Events (events, Event) are the append-only audit log: every external
//     call (fly.*, gateway.*) and every transition (machine.*, run.*).
//     drain_history is the view the history command and the web view read.
//   - The outbox (notifications, migration 011): the trigger events_notify
//     turns the event kinds on-call must hear of into one row per sink that
//     wants it, in the transaction that writes the event; internal/notify
//     delivers them.
//
// Beside them: the auto-update channels, the drain secrets written
// (secret_syncs), the drain estimates planning orders by, and the schema's
// own migrations (Upgrade, under a session advisory lock).
//
// # Every transition with its audit event, in one transaction
//
// A state change and the events that record it commit together or not at
// all. A machine's step is one statement (Q.SaveStep: its row, its drain
// and its events, the calls made for it included), or a transaction
// (Store.InTx) when more moves with it: a machine that gives back its slot
// refills it and settles its run in the same transaction. Every change of
// a run's state goes through Q.SetRunState, which writes its run.<state>
// event (and so its notifications) with it.
//
// # The version guard
//
// A machine migration's row carries a version. SaveStep writes only if the
// row is still at the version read, and bumps it; otherwise nothing is
// written (not the drain, not the events) and it returns ErrConflict. A
// second execution of the same job (a replica presumed dead, a rescued
// job) cannot overwrite the first: it reads the machine again.
//
// # Slots and the advisory lock
//
// A machine is disrupted from the moment it holds a budget slot
// (slot_held) until it is done. Slots are handed out only by Q.FillSlots
// and Q.ClaimSlot, each under one transaction-scoped advisory lock
// (fleetSlotAdvisoryLockID), so every replica and every run counts the
// same: at most a run's max_unavailable per run and the fleet cap across
// all of them, canaries first and the rest behind the canary gate, in plan
// order.
//
// # States and outcomes
//
// MigrationState, Outcome, DrainOutcome and RunState are the columns'
// values as typed strings (states.go); the SQL reads and writes the same
// text.
package store
