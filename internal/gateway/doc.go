// Package gateway is migrator's client for the drain control of one Hermes
// agent: the dashboard routes POST /api/gateway/drain (begin or cancel) and
// GET /api/status (the public liveness probe), as described in
// shared/contracts/hermes-gateway.md.
//
// # Model
//
// A Target names one agent (app, machine, region, private IP, instance). Its
// base URL comes from a template, by default
//
//	http://{machine_id}.vm.{app}.internal:9119
//
// whose placeholders {app} {machine_id} {region} {private_ip} {instance_id}
// are replaced by the target's path-escaped values; the template may carry a
// path prefix (e.g. a proxy or the fleet simulator: http://host/m/{machine_id})
// and the routes are appended to it.
//
// Each agent has its own drain secret, derived on every call from the
// control-plane key (package drainsecret) and never stored; it travels only in
// the Authorization header of the drain POST. It never appears in an error, a
// log line or a callrec.Call: transport errors are stripped of their URL, a
// gateway's error detail is redacted of the secret and the key, and no
// request or response body is ever logged.
//
// # The wire
//
// Bodies are built with encoding/json from structs holding a real bool:
// {"action":"drain","suppress_notification":true|false} and
// {"action":"cancel"}. The gateway passes suppress_notification through
// Python's bool() (the string "false" would be true) and treats a body that
// is not JSON as a begin, so nothing else is ever sent. Unknown response
// fields are ignored.
//
// # What an agent sends is bounded
//
// An agent is a tenant's and may answer anything (bounds.go). The transport
// refuses headers over MaxHeaderBytes (64 KiB; Go's default is 10 MiB) and
// never uses a proxy (the drain secret travels in clear on the private
// network); a body is read up to 1 MiB; callrec keeps a request id only when
// it is at most callrec.MaxRequestID bytes of printable ASCII, else the call
// says "request id dropped" instead. Every string read from /api/status or a
// drain answer is cleaned once, where it is parsed, to one printable line of
// a bounded length (package printsafe: terminal escapes, control and bidi
// characters removed); at most MaxPlatforms platforms are kept, the first by
// name; Status.Oversized (kept with the signals) says what was over a bound.
// Errors quote an agent's text only through the same cleaning, cut to 200
// characters.
//
// # Failures
//
// Every call goes through go-retryablehttp: transport errors, 5xx and 429 are
// retried with exponential backoff and jitter (429 and 503 wait for
// Retry-After, up to Config.RetryAfterMax), each attempt bounded by
// Config.CallTimeout and the whole call by the context. Every attempt is
// recorded through callrec (kind gateway.begin, gateway.cancel or
// gateway.status; target app/machine_id).
//
// Errors are classified by type, never by text; IsPermanent tells the caller
// whether repeating the call can help:
//
//   - *HTTPError: the gateway answered with a non-2xx status. 400, 401, 403
//     and 405 are permanent (a wrong secret or a gateway without the drain
//     secret configured will not heal: fail that agent's migration, never
//     recreate it blind). 404, 429, 5xx and the rest are transient.
//   - *DecodeError: a 2xx answer that is not the contract's JSON (malformed,
//     not an object, a required field missing, draining not confirmed).
//     Transient: during a recreate a proxy or a half-started server may
//     answer for the agent, both drain actions are idempotent, and the
//     caller's own deadline bounds how long it keeps asking.
//   - *CallError: no usable answer (transport failure, per-attempt timeout,
//     context done); wraps the cause, so errors.Is(err,
//     context.DeadlineExceeded) works. Transient.
//   - *TargetError: the target cannot be turned into a URL (an empty value
//     for a placeholder the template uses). Permanent.
//
// # Readiness probe
//
// Probe is a drain POST with the agent's derived secret and an action no
// gateway knows (ProbeAction). The gateway checks the bearer before it reads
// the body and refuses an unknown action with 400, so the probe has no side
// effect and its answer is a Readiness: 400 Ready, 401 NoSecret (no secret,
// or another one), 404 NoDrainRoute (an older Hermes), 403 Forbidden, 5xx
// ServerError (after retries), no answer Unreachable, anything else
// (including a 2xx) Unexpected. Classify sorts any drain call's error the
// same way, and Undrainable picks the two answers (401, 404) that a run
// with undrainable = "recreate" moves without a drain.
//
// A 401 is told apart by its body (Explain401): the drain route's own
// bearer check answers {"error":"unauthenticated"} without a reason (the
// agent holds another secret); a gated bind's login gate answers before
// routing with a "reason" (no drain route there: an older Hermes, or no
// drain secret configured), which /api/status's version against
// MIGRATOR_HERMES_MIN_DRAIN_VERSION tells apart.
//
// # Status
//
// Status.Quiescent is the contract's test (state "draining" and no active
// agents, or the gateway not running); Status.Serving says the gateway
// process takes turns (running, state "running" or "degraded"). Status
// also carries what the agent says of itself: gateway_platforms (per
// platform state, error_code, error_message, needs_attention,
// retrying_since), overall, nous_session_valid, version and
// gateway_exit_reason, read leniently (an unknown shape or state is kept or
// left out, never an error). Status.Signals is that, time-stamped, as the
// orchestrator records it before a drain and judges a new image by. A status
// answer without gateway_running, or without active_agents while running, is
// a DecodeError rather than a silent zero, because a zero there would read as
// quiescent and let the machine be recreated under a user's turn.
package gateway
