package flymachines

import (
	"fmt"
	"time"

	fly "github.com/superfly/fly-go"
)

// Event is one machine event as flyd records it (fly-go v0.9.3
// fly.MachineEvent): type launch, start, update, exit, restart, stop…;
// status; source flyd or user; when; and, for an exit, what ended the
// process (request.exit_event, request.restart_count).
type Event struct {
	Type, Status, Source string
	At                   time.Time
	// Exit is set for events that carry an exit_event.
	Exit *Exit
}

// Exit is an exit event's detail (fly.MachineExitEvent and the request's
// restart_count).
type Exit struct {
	ExitCode, GuestExitCode, GuestSignal, Signal int
	OOMKilled, RequestedStop, Restarting         bool
	RestartCount                                 int
	ExitedAt                                     time.Time
}

// Crashed reports whether the exit was the process ending on its own: not
// a stop that was asked for (an update's or a person's SIGTERM), and either
// a failure (non-zero exit code), an OOM kill or a restart by flyd.
// flyctl's isConstantlyRestarting (internal/machine/leasable_machine.go)
// reads the newest exit the same way: !requested_stop && restarting &&
// exit_code != 0 (and restart_count > 1 for "constantly").
func (e Exit) Crashed() bool {
	return !e.RequestedStop && (e.ExitCode != 0 || e.GuestExitCode != 0 || e.OOMKilled || e.Restarting)
}

// String is one line: "exit_code=1 oom_killed=false requested_stop=false
// restarting=true restart_count=2", as `fly machine status` shows it plus
// the restart fields.
func (e Exit) String() string {
	return fmt.Sprintf("exit_code=%d oom_killed=%t requested_stop=%t restarting=%t restart_count=%d",
		e.ExitCode, e.OOMKilled, e.RequestedStop, e.Restarting, e.RestartCount)
}

func toEvents(evs []*fly.MachineEvent) []Event {
	if len(evs) == 0 {
		return nil
	}
	out := make([]Event, 0, len(evs))
	for _, e := range evs {
		if e == nil {
			continue
		}
		ev := Event{Type: e.Type, Status: e.Status, Source: e.Source, At: e.Time().UTC()}
		if r := e.Request; r != nil {
			// flyd puts the exit under request.exit_event, or under
			// request.MonitorEvent.exit_event (fly-go's GetExitCode reads
			// both, the monitor's first).
			x := r.ExitEvent
			if r.MonitorEvent != nil && r.MonitorEvent.ExitEvent != nil {
				x = r.MonitorEvent.ExitEvent
			}
			if x != nil {
				ev.Exit = &Exit{ExitCode: x.ExitCode, GuestExitCode: x.GuestExitCode, GuestSignal: x.GuestSignal,
					Signal: x.Signal, OOMKilled: x.OOMKilled, RequestedStop: x.RequestedStop, Restarting: x.Restarting,
					RestartCount: r.RestartCount, ExitedAt: x.ExitedAt.UTC()}
			}
		}
		out = append(out, ev)
	}
	return out
}
