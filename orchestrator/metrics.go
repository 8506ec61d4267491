package orchestrator

import (
	"context"
	"time"

	"github.com/hermes-cloud/migrator/store"
)

// Observer is told what this replica's workers finished, for metrics. Each
// call comes once per change, after the change is committed (a re-delivered
// job that finds its work done reports nothing). Calls must not block.
type Observer interface {
	// MachineDone: a machine migration ended with outcome (store.Outcome*).
	MachineDone(outcome store.Outcome)
	// DrainEnded: a begun drain ended with outcome (store.Drain*) after
	// waiting wait (clock time from the first begin to the end).
	DrainEnded(quiet bool, outcome store.DrainOutcome, wait time.Duration)
	// AutoUpdateTick: an auto-update tick ended with outcome (AutoUpdate*),
	// or "error".
	AutoUpdateTick(outcome string)
	// Peeked: a status read before a drain found the agent PeekIdle,
	// PeekBusy, PeekQuietWait or PeekUnreadable.
	Peeked(result string)
	// IdleWaitEnded: a machine stopped waiting for an idle moment with
	// result IdleFound, IdleBusyDrained or IdleBusyDeferred, after waiting
	// wait (clock time from the first peek).
	IdleWaitEnded(result string, wait time.Duration)
	// RollbackStarted: a new instance was given up in phase "verify" or
	// "bake", decided by signal (the deciding signal recorded with it).
	RollbackStarted(phase, signal string)
	// BakeEnded: a canary's bake ended with result BakeClean,
	// BakeRegressed or BakeCut after watching it for d (clock time).
	BakeEnded(result string, d time.Duration)
}

// Peek and idle-wait results, as the Observer hears them.
const (
	PeekIdle       = "idle"
	PeekBusy       = "busy"
	PeekUnreadable = "unreadable"
	// PeekQuietWait: nothing in flight, but not yet quiet for the
	// decision's idle_quiet_for.
	PeekQuietWait    = "quiet_wait"
	IdleFound        = "idle"
	IdleBusyDrained  = "busy_drained"
	IdleBusyDeferred = "busy_deferred"
)

type nopObserver struct{}

func (nopObserver) Peeked(string)                       {}
func (nopObserver) RollbackStarted(string, string)      {}
func (nopObserver) BakeEnded(string, time.Duration)     {}
func (nopObserver) IdleWaitEnded(string, time.Duration) {}

func (nopObserver) MachineDone(store.Outcome)                          {}
func (nopObserver) DrainEnded(bool, store.DrainOutcome, time.Duration) {}
func (nopObserver) AutoUpdateTick(string)                              {}

// RunsByState counts runs by state, fleet-wide (every replica sees the same).
func (o *Orchestrator) RunsByState(ctx context.Context) (map[string]int, error) {
	return o.store.Q().CountRunsByState(ctx)
}

// SlotsInUse counts the machines holding a budget slot, fleet-wide.
func (o *Orchestrator) SlotsInUse(ctx context.Context) (int, error) {
	return o.store.Q().SlotsInUse(ctx)
}

// OnCallStatus reads what the alert rules' gauges need, fleet-wide.
func (o *Orchestrator) OnCallStatus(ctx context.Context) (store.OnCallStatus, error) {
	return o.store.Q().ReadOnCallStatus(ctx)
}

// CanariesBaking counts the canaries being baked now, fleet-wide.
func (o *Orchestrator) CanariesBaking(ctx context.Context) (int, error) {
	return o.store.Q().CanariesBaking(ctx)
}
