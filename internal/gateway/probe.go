package gateway

import (
	"context"
	"errors"
	"net/http"
	"strings"
)

// OpProbe names the readiness probe in callrec and errors.
const OpProbe = "gateway.probe"

// ProbeAction is an action no gateway knows: the gateway checks the bearer
// before it reads the body, then refuses the action with 400, so the probe
// begins and cancels nothing.
const ProbeAction = "migrator-readiness-probe"

// Readiness is what a drain probe says about an agent's drain endpoint.
type Readiness string

// The readiness categories, as shared/contracts/hermes-gateway.md defines
// the probe's answers.
const (
	// Ready: 400 to the unknown action: the route exists and the secret is good.
	Ready Readiness = "ready"
	// NoSecret: 401: the agent holds no drain secret, or another one (until
	// its next recreate after `secret sync`).
	NoSecret Readiness = "no_secret"
	// NoDrainRoute: 404: an older Hermes without the drain endpoint.
	NoDrainRoute Readiness = "no_drain_route"
	// Forbidden: 403: a token of another scope.
	Forbidden Readiness = "forbidden"
	// ServerError: 5xx (after retries).
	ServerError Readiness = "server_error"
	// Unreachable: no answer (the dashboard is down, the VM is not running).
	Unreachable Readiness = "unreachable"
	// HostRejected: 400 "Invalid Host header": the dashboard is bound to a
	// hostname and refused the one migrator's URL template names, after
	// the bearer was accepted and before routing (hermes-agent
	// hermes_cli/web_server.py host_header_middleware). Not a drain route
	// answering: every call to this dashboard gets the same 400.
	HostRejected Readiness = "host_rejected"
	// Unexpected: any other answer, including a 2xx (the gateway did not
	// follow the contract, and may have acted on the probe), and a 400
	// whose detail is neither of the two above.
	Unexpected Readiness = "unexpected"
)

// The details of hermes-agent's 400s that say who answered: the drain
// route refusing an action it does not know (web_server gateway_drain:
// "Unknown drain action …"), or the dashboard's Host check before routing
// ("Invalid Host header. Dashboard requests must use the hostname the
// server was bound to." — newer versions add "or the configured public
// hostname").
const (
	detailUnknownAction = "Unknown drain action"
	detailInvalidHost   = "Invalid Host header"
)

// Readinesses lists every category, ready first, in report order.
func Readinesses() []Readiness {
	return []Readiness{Ready, NoSecret, NoDrainRoute, NoSecretOrRoute, Forbidden, HostRejected, ServerError, Unreachable, Unexpected}
}

// ProbeResult is one probe's answer.
type ProbeResult struct {
	Readiness  Readiness
	StatusCode int   // the answer's HTTP status; 0 when none
	Err        error // nil when Ready; else why not (one line, no secret)
}

// Probe asks the agent's drain endpoint, without side effects, whether it
// would accept a drain from migrator: a POST with the agent's derived
// secret and an unknown action. Only the drain route's own 400 ("Unknown
// drain action …") is Ready: a 400 "Invalid Host header" is the dashboard
// refusing the hostname before routing (HostRejected), and a 400 with any
// other detail is not the contract's (Unexpected). 5xx and transport
// errors are retried like every call, within ctx.
func (c *Client) Probe(ctx context.Context, t Target) ProbeResult {
	status, _, err := c.do(ctx, OpProbe, t, http.MethodPost, drainRoute, cancelRequest{Action: ProbeAction})
	if err == nil {
		return ProbeResult{Readiness: Unexpected, StatusCode: status,
			Err: &DecodeError{Op: OpProbe, Target: t.String(), StatusCode: status, Reason: "the gateway accepted an unknown drain action"}}
	}
	var he *HTTPError
	if errors.As(err, &he) && he.StatusCode == http.StatusBadRequest && strings.HasPrefix(he.Detail, detailUnknownAction) {
		return ProbeResult{Readiness: Ready, StatusCode: he.StatusCode}
	}
	r, code := Classify(err)
	return ProbeResult{Readiness: r, StatusCode: code, Err: err}
}

// Classify sorts a drain call's error into a readiness category, with the
// answer's status code (0 when none). nil is Ready.
func Classify(err error) (Readiness, int) {
	if err == nil {
		return Ready, 0
	}
	var he *HTTPError
	if errors.As(err, &he) {
		switch code := he.StatusCode; {
		case code == http.StatusUnauthorized:
			return NoSecret, code
		case code == http.StatusNotFound:
			return NoDrainRoute, code
		case code == http.StatusForbidden:
			return Forbidden, code
		case code == http.StatusBadRequest && strings.HasPrefix(he.Detail, detailInvalidHost):
			return HostRejected, code
		case code >= 500:
			return ServerError, code
		default:
			return Unexpected, code
		}
	}
	var ce *CallError
	if errors.As(err, &ce) {
		if ce.LastStatus >= 500 {
			return ServerError, ce.LastStatus
		}
		return Unreachable, ce.LastStatus
	}
	return Unexpected, 0
}

// Undrainable reports whether a begin's error says the agent cannot be
// drained yet — 404 (no drain route) or 401 (no secret, or another one) —
// with the status code. Those are the answers a run may meet with
// undrainable = "recreate"; everything else (403, 5xx, unreachable) is not.
func Undrainable(err error) (code int, ok bool) {
	switch r, code := Classify(err); r {
	case NoSecret, NoDrainRoute:
		return code, true
	}
	return 0, false
}
