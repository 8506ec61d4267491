package orchestrator

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/gateway"
)

// The agent's own signals decide whether a new image is healthy, against
// what the same agent showed before its drain (shared/contracts/
// hermes-gateway.md, "After a recreate, serving must mean…"): a platform
// that was down before does not count against the image, one that was up
// must be up again (or "disabled": informational, not a regression); a
// Nous session that was valid must not be terminal.

// Signals that decide a rollback besides those of verify's Fly reads.
const (
	signalPlatformParked  = "platform_parked"       // a platform up before is parked (fatal) after
	signalPlatformNotUp   = "platform_not_up"       // a platform up before is not up again in time
	signalNousTerminal    = "nous_session_terminal" // the Nous session was valid, now terminal
	signalGatewayDown     = "gateway_not_running"   // during the bake: the gateway process is not running
	signalGatewayUnread   = "gateway_unreachable"   // during the bake: /api/status unreadable too long
	signalFlyExit         = "fly_exit"              // the new instance exited on its own (Fly event)
	signalFlyOOM          = "fly_oom_killed"        // … killed out of memory
	signalFlyRestart      = "fly_restart"           // flyd restarted it (a restart event)
	signalInstanceChanged = "instance_changed"      // during the bake: the machine left the new instance
)

// verdict is what the agent's signals say of the new image now.
type verdict struct {
	// regressed: definitively worse than before: roll back now.
	regressed bool
	// pending: not (yet) as good as before, not definitively worse: wait
	// (at the end of the window, a pending verdict is a regression).
	pending bool
	signal  string // the deciding signal when regressed or pending
	reason  string // one line naming the platform and its error_code
}

// judgeAgent compares the agent's signals after the recreate with its
// signals before (nil: none were read, so only the gateway itself is
// judged). final: the window to come up again is over, so what is still
// pending is a regression. It judges only what the agent says of its
// platforms and Nous session; whether the gateway serves at all is the
// caller's test.
func judgeAgent(before *gateway.Signals, after gateway.Signals, final bool) verdict {
	if before == nil {
		return verdict{}
	}
	var pending *verdict
	for _, name := range before.UpPlatforms() {
		a, ok := after.Platforms[name]
		switch {
		case ok && a.Up():
			continue
		case ok && a.Disabled():
			// Informational: a platform this gateway deliberately does not
			// run (a multiplexed profile's, whose ingress the default
			// profile owns), never a regression (hermes-agent's status
			// route leaves it out of its rollup).
			continue
		case ok && a.Parked():
			return verdict{regressed: true, signal: signalPlatformParked,
				reason: fmt.Sprintf("platform %s is %s after the update%s; it was %s before", name, platformWord(a),
					platformError(a), before.Platforms[name].State)}
		case pending == nil:
			state := "not reported"
			if ok {
				state = platformWord(a) + platformError(a)
			}
			pending = &verdict{pending: true, signal: signalPlatformNotUp,
				reason: fmt.Sprintf("platform %s is %s after the update; it was %s before", name, state, before.Platforms[name].State)}
		}
	}
	if before.NousSession == gateway.NousValid && after.NousSession == gateway.NousTerminal {
		return verdict{regressed: true, signal: signalNousTerminal,
			reason: "nous_session_valid is terminal after the update (every inference turn fails); it was valid before"}
	}
	if pending != nil {
		if final {
			pending.regressed, pending.pending = true, false
		}
		return *pending
	}
	return verdict{}
}

func platformWord(p gateway.Platform) string {
	s := p.State
	if s == "" {
		s = "in no state"
	}
	if p.NeedsAttention {
		s += " (needs attention)"
	}
	return s
}

// platformError is ", error_code X: message" (or "") for a reason.
func platformError(p gateway.Platform) string {
	var b strings.Builder
	if p.ErrorCode != "" {
		fmt.Fprintf(&b, " (error_code %s", p.ErrorCode)
		if p.ErrorMessage != "" {
			fmt.Fprintf(&b, ": %s", shorten(p.ErrorMessage, 120))
		}
		b.WriteString(")")
	} else if p.ErrorMessage != "" {
		fmt.Fprintf(&b, " (%s)", shorten(p.ErrorMessage, 120))
	}
	return b.String()
}

func shorten(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

// flyCrash finds, among a machine's events (newest first), the newest exit
// after since that the process did on its own (not an asked-for stop), or a
// restart event: the new instance crashing, which flyd's restart policy may
// have hidden from the machine's state already.
func flyCrash(events []flymachines.Event, since time.Time) (signal, reason string) {
	for _, e := range events {
		if !e.At.After(since) {
			break
		}
		switch {
		case e.Type == "exit" && e.Exit != nil && e.Exit.Crashed():
			signal = signalFlyExit
			if e.Exit.OOMKilled {
				signal = signalFlyOOM
			}
			return signal, fmt.Sprintf("the new instance exited on its own %s after the update (Fly exit event: %s)",
				e.At.Sub(since).Round(time.Second), e.Exit)
		case e.Type == "restart":
			return signalFlyRestart, fmt.Sprintf("flyd restarted the new instance %s after the update (Fly restart event, status %s)",
				e.At.Sub(since).Round(time.Second), e.Status)
		}
	}
	return "", ""
}

// encodeSignals is s as stored (nil on the impossible marshal error).
func encodeSignals(s gateway.Signals) []byte {
	b, err := json.Marshal(s)
	if err != nil {
		return nil
	}
	return b
}
