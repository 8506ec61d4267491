package orchestrator

// The River worker that walks one machine migration. Each execution
// (machineWorker.Work) loads the machine, takes every step that needs no
// waiting (Orchestrator.stepMachine) and returns what happens next: nil when the
// machine is done, a snooze while it waits. advance dispatches on the
// machine's state to the file that handles it:
//
//	pending (idle watch)  step_idle.go
//	ready                 step_ready.go (lease: step_lease.go)
//	decided, draining     step_drain.go
//	updating              step_update.go
//	verifying             step_verify.go
//	baking                step_bake.go
//	rolling_back          step_rollback.go
//	putting_down          step_wake.go
//
// What every step shares (the writes, the ways a machine ends) is in
// step.go.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/riverqueue/river"

	"github.com/hermes-cloud/migrator/internal/callrec"
	"github.com/hermes-cloud/migrator/store"
)

type machineWorker struct {
	river.WorkerDefaults[MachineArgs]
	o *Orchestrator
}

// Timeout bounds one execution (see jobTimeout).
func (w *machineWorker) Timeout(*river.Job[MachineArgs]) time.Duration { return w.o.jobTimeout }

// Work runs one execution of a machine migration: it loads the machine's
// state, takes as many steps as need no waiting, and returns what happens
// next: nil when the machine is done, a snooze while it waits.
func (w *machineWorker) Work(ctx context.Context, job *river.Job[MachineArgs]) error {
	next, err := w.o.stepMachine(ctx, job.Args.MigrationID)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return river.JobCancel(err)
		}
		if errors.Is(err, store.ErrConflict) {
			// Another execution of this job moved the machine; look again soon.
			return river.JobSnooze(time.Second)
		}
		return err
	}
	if next.done {
		return nil
	}
	d := max(w.o.cfg.Clock.Wall(next.after), 10*time.Millisecond)
	if m := w.o.maxSnooze; m > 0 && d > m {
		d = m // woken early, the step sees its wait is not over and snoozes again
	}
	return river.JobSnooze(d)
}

// next is what a step asks for: done, or wait this long (clock time).
type next struct {
	done  bool
	after time.Duration
}

func wait(d time.Duration) next { return next{after: d} }

var finished = next{done: true}

// stepMachine advances migration id as far as it can go without waiting:
// one execution of its job (Work), and what the job does next.
func (o *Orchestrator) stepMachine(ctx context.Context, id int64) (next, error) {
	calls := &callrec.Log{}
	ctx = callrec.WithLog(ctx, calls)
	w, err := o.store.Q().LoadMachineWork(ctx, id)
	if err != nil {
		return next{}, err
	}
	s := &step{o: o, w: w, calls: calls, heldSlot: w.Migration.SlotHeld}
	s.m = &s.w.Migration
	s.drainEnded = w.Drain != nil && w.Drain.Outcome != ""
	s.log = o.log.With("run_id", s.m.RunID, "app", s.m.App, "machine_id", s.m.MachineID)
	ctx, cancel := context.WithTimeout(ctx, o.jobTimeout*2/3)
	defer cancel()
	// A machine with nothing to wait for goes on to its next state at once;
	// the bound only guards against a bug looping forever.
	for range 16 {
		if s.m.State == store.StateDone {
			return finished, nil
		}
		before := s.m.State
		n, err := s.advance(ctx)
		if err != nil || n.done || n.after > 0 || s.m.State == before {
			return n, err
		}
	}
	return wait(time.Second), nil
}

func (s *step) advance(ctx context.Context) (next, error) {
	switch s.m.State {
	case store.StatePending:
		if s.m.IdleWatch {
			return s.watchIdle(ctx)
		}
		// Not ours to run: the budget has not given it a slot (a stale job).
		return finished, nil
	case store.StateReady:
		return s.ready(ctx)
	case store.StateDecided:
		return s.begin(ctx)
	case store.StateDraining:
		return s.draining(ctx)
	case store.StateUpdating:
		return s.update(ctx)
	case store.StateVerifying:
		return s.verify(ctx)
	case store.StateBaking:
		return s.bake(ctx)
	case store.StateRollingBack:
		return s.rollback(ctx)
	case store.StatePuttingDown:
		return s.putDown(ctx)
	}
	return next{}, fmt.Errorf("machine migration %d: unknown state %q", s.m.ID, s.m.State)
}
