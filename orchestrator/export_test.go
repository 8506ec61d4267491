package orchestrator

import "context"

// Step runs one execution of migration id's job by hand, as River would:
// every step that needs no waiting. What the job would do next (done, or a
// snooze) stays inside the package; the tests read the machine's row.
func (o *Orchestrator) Step(ctx context.Context, id int64) error {
	_, err := o.stepMachine(ctx, id)
	return err
}
