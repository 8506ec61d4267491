package store

// The states and outcomes of runs, machine migrations and drains, as
// stored (the strings are the columns' values; the SQL is unchanged).

// MigrationState is where a machine is on its path through a run
// (machine_migrations.state).
type MigrationState string

// Machine migration states: where a machine is on its path.
const (
	StatePending     MigrationState = "pending"      // waiting for a budget slot
	StateReady       MigrationState = "ready"        // holds a slot; next: read, lease, decide
	StateDecided     MigrationState = "decided"      // policy decision recorded; next: begin the drain
	StateDraining    MigrationState = "draining"     // drain begun; waiting for quiescence or the deadline
	StateUpdating    MigrationState = "updating"     // drain over; next: update the machine to the image
	StateVerifying   MigrationState = "verifying"    // update sent; waiting for the new instance to be healthy
	StateBaking      MigrationState = "baking"       // a canary that verified, watched until its bake ends
	StateRollingBack MigrationState = "rolling_back" // verification failed; putting the old image back
	StatePuttingDown MigrationState = "putting_down" // a canary woken to run the image, being put back down
	StateDone        MigrationState = "done"         // outcome set
)

// Outcome is how a machine migration ended (machine_migrations.outcome):
// set with state done, "" before.
type Outcome string

// Outcomes of a machine migration.
const (
	OutcomeMigrated        Outcome = "migrated"
	OutcomeRolledBack      Outcome = "rolled_back"
	OutcomeFailed          Outcome = "failed"
	OutcomeSkippedUpToDate Outcome = "skipped_up_to_date"
	OutcomeDeferred        Outcome = "deferred"
	OutcomeCancelled       Outcome = "cancelled"
)

// DrainOutcome is how a machine's drain ended (drains.outcome): "" while
// it lasts.
type DrainOutcome string

// Outcomes of a drain.
const (
	DrainQuiesced         DrainOutcome = "quiesced"
	DrainDeadlineForced   DrainOutcome = "deadline_forced"
	DrainDeadlineDeferred DrainOutcome = "deadline_deferred"
	DrainGatewayDown      DrainOutcome = "gateway_down"
	DrainCancelled        DrainOutcome = "cancelled"
	DrainFailed           DrainOutcome = "failed"
	// DrainUndrainable: the drain endpoint answered 404 or 401 and the
	// decision was undrainable = recreate: moved without a drain.
	DrainUndrainable DrainOutcome = "undrainable"
	// DrainNotRunning: the machine was not running (stopped, suspended)
	// when leased, or went down during its drain: nobody to drain.
	DrainNotRunning DrainOutcome = "not_running"
)

// RunState is where a run is (runs.state).
type RunState string

// Run states.
const (
	RunPending    RunState = "pending"
	RunRunning    RunState = "running"
	RunPaused     RunState = "paused"
	RunCancelling RunState = "cancelling"
	RunSucceeded  RunState = "succeeded"
	RunFailed     RunState = "failed"
	RunCancelled  RunState = "cancelled"
)

// RunTerminal reports whether a run in state s is over.
func RunTerminal(s RunState) bool {
	return s == RunSucceeded || s == RunFailed || s == RunCancelled
}
