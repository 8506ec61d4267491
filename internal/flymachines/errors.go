package flymachines

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/superfly/fly-go/flaps"
)

// The typed errors callers classify with errors.As.
var (
	_ error = (*APIError)(nil)
	_ error = (*LeaseHeldError)(nil)
	_ error = (*RevertedError)(nil)
	_ error = (*HostUnavailableError)(nil)
	_ error = (*ContainersError)(nil)
	_ error = (*StateChangedError)(nil)
)

// maxMsg bounds the server text kept in an error: enough for a human, never a
// whole response body.
const maxMsg = 200

// APIError is a failed call to the Machines API. Classify it with
// IsTransient / IsNotFound or errors.As, never by its text.
type APIError struct {
	Op        string // callrec kind, e.g. "fly.update"
	App       string
	MachineID string
	Status    int    // HTTP status; 0 when no response arrived
	RequestID string // Fly-Request-Id, for Fly support
	Msg       string // the server's short error text, or the transport failure
	// Err is the cause: a *flaps.FlapsError (body truncated) or a
	// transport/context error. errors.Is(err, flaps.ErrFlapsNotFound) works.
	Err error

	temporary bool // no response, and worth trying again (network, deadline)
}

func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString(e.Op)
	b.WriteByte(' ')
	b.WriteString(target(e.App, e.MachineID))
	b.WriteString(": ")
	if e.Status != 0 {
		fmt.Fprintf(&b, "HTTP %d", e.Status)
		if e.Msg != "" {
			b.WriteString(": ")
		}
	}
	b.WriteString(e.Msg)
	if e.RequestID != "" {
		fmt.Fprintf(&b, " (fly-request-id %s)", e.RequestID)
	}
	return b.String()
}

func (e *APIError) Unwrap() error { return e.Err }

// Transient reports whether trying again later may succeed: 408, 429, 5xx,
// network failures and timeouts. Other 4xx are permanent.
func (e *APIError) Transient() bool {
	switch {
	case e.Status == 0:
		return e.temporary
	case e.Status == http.StatusRequestTimeout, e.Status == http.StatusTooManyRequests:
		return true
	case e.Status >= 500:
		return true
	}
	return false
}

// LeaseHeldError: another owner holds the machine's lease (HTTP 409).
// Permanent for this attempt; the caller snoozes until ExpiresAt.
type LeaseHeldError struct {
	Op             string // fly.lease_acquire or fly.lease_refresh
	App, MachineID string
	Owner          string    // as Fly reports it; may be empty
	ExpiresAt      time.Time // zero when Fly did not say
	RequestID      string
	Msg            string // Fly's short error text
	// Code is the answer's "code" ("invalid" in Fly's API reference), if any.
	Code string
}

func (e *LeaseHeldError) Error() string {
	owner := e.Owner
	if owner == "" {
		owner = "another owner"
	}
	s := fmt.Sprintf("%s %s: lease held by %s", e.Op, target(e.App, e.MachineID), owner)
	if !e.ExpiresAt.IsZero() {
		s += " until " + e.ExpiresAt.UTC().Format(time.RFC3339)
	}
	if e.Owner == "" && e.Msg != "" {
		s += " (" + e.Msg + ")"
	}
	return s
}

// Transient is false: retrying at once cannot succeed; snooze instead.
func (e *LeaseHeldError) Transient() bool { return false }

// RevertedError: after an update the machine does not run the instance and
// image we asked for. flyd silently reverts a failed update (an image that
// cannot be pulled, say) and starts the old version again.
type RevertedError struct {
	App, MachineID string
	WantInstance   string
	GotInstance    string
	WantImage      string
	GotImage       string
	State          string // machine state when it was read
}

func (e *RevertedError) Error() string {
	return fmt.Sprintf("fly %s: update did not stick: want instance %s image %s, machine is %s on instance %s image %s",
		target(e.App, e.MachineID), e.WantInstance, e.WantImage, e.State, e.GotInstance, e.GotImage)
}

// Transient is false: waiting longer will not bring the new instance back.
func (e *RevertedError) Transient() bool { return false }

// HostUnavailableError: Fly cannot read the machine's full config because its
// host is not "ok"; updating from a partial config would lose settings.
type HostUnavailableError struct {
	App, MachineID string
	HostStatus     string
}

func (e *HostUnavailableError) Error() string {
	return fmt.Sprintf("fly %s: host status %q: machine config incomplete, refusing to update",
		target(e.App, e.MachineID), e.HostStatus)
}

// Transient is true: hosts come back.
func (e *HostUnavailableError) Transient() bool { return true }

// ContainersError: the machine has config.containers and the update named
// no container, or one it does not have. Nothing was sent: changing
// config.image alone would leave every container on its old image.
type ContainersError struct {
	App, MachineID string
	Containers     []string // the machine's containers
	Want           string   // the container asked for ("": none)
}

func (e *ContainersError) Error() string {
	if e.Want == "" {
		return fmt.Sprintf("fly %s: multi-container machine (containers %s): an update of config.image would leave them on their images; name the container to move",
			target(e.App, e.MachineID), strings.Join(e.Containers, ", "))
	}
	return fmt.Sprintf("fly %s: no container %q (containers %s)", target(e.App, e.MachineID), e.Want, strings.Join(e.Containers, ", "))
}

// Transient is false: the machine's config has to change first.
func (e *ContainersError) Transient() bool { return false }

// StateChangedError: the update was to leave a machine down (no launch),
// but the fresh read shows it running: something started it since the
// decision (Fly Proxy, for a user's request). Nothing was sent.
type StateChangedError struct {
	App, MachineID string
	State          string // the state read now
}

func (e *StateChangedError) Error() string {
	return fmt.Sprintf("fly %s: machine is %s now, not down as when the update was decided", target(e.App, e.MachineID), e.State)
}

// Transient is false: the caller must decide again, not resend.
func (e *StateChangedError) Transient() bool { return false }

// IsTransient reports whether err is worth retrying later.
func IsTransient(err error) bool {
	var t interface{ Transient() bool }
	if errors.As(err, &t) {
		return t.Transient()
	}
	return false
}

// IsNotFound reports whether err is Fly's 404 (no such app or machine, or no lease).
func IsNotFound(err error) bool {
	if errors.Is(err, flaps.ErrFlapsNotFound) {
		return true
	}
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound
}

// IsBusy reports whether Fly refused a mutation because the machine is in
// the middle of another change (409 that is not a lease: "concurrent update
// in progress" while it is replacing or starting). It is no verdict on the
// machine: the same call can succeed once that change is over.
func IsBusy(err error) bool {
	var held *LeaseHeldError
	if errors.As(err, &held) {
		return false
	}
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == http.StatusConflict
}

// Status returns the HTTP status behind err, or 0.
func Status(err error) int {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status
	}
	var fe *flaps.FlapsError
	if errors.As(err, &fe) {
		return fe.ResponseStatusCode
	}
	return 0
}

func target(app, id string) string {
	if id == "" {
		return app
	}
	return app + "/" + id
}

// apiError classifies err from fly-go or from a direct request into an
// *APIError naming op and target. Typed errors of this package pass through.
// redact lists further values (a secret being set) that must not survive
// into the error, should a server or proxy echo the request.
func (c *Client) apiError(op, app, id string, err error, redact ...string) error {
	if err == nil {
		return nil
	}
	var (
		held *LeaseHeldError
		rev  *RevertedError
		ae   *APIError
		host *HostUnavailableError
		ctr  *ContainersError
		sc   *StateChangedError
	)
	if errors.As(err, &held) || errors.As(err, &rev) || errors.As(err, &ae) || errors.As(err, &host) ||
		errors.As(err, &ctr) || errors.As(err, &sc) {
		return err
	}
	e := &APIError{Op: op, App: app, MachineID: id}
	var fe *flaps.FlapsError
	var ue *url.Error
	switch {
	case errors.As(err, &fe):
		e.Status = fe.ResponseStatusCode
		e.RequestID = fe.FlyRequestId
		e.Msg = c.scrub(serverText(fe), redact...)
		// Keep a copy with a short body: the original may hold a large one,
		// and fly-go's wrapping adds nothing.
		e.Err = &flaps.FlapsError{
			OriginalError:      errors.New(e.Msg),
			ResponseStatusCode: fe.ResponseStatusCode,
			ResponseBody:       []byte(e.Msg),
			FlyRequestId:       fe.FlyRequestId,
			TraceID:            fe.TraceID,
		}
		return e
	case errors.Is(err, context.Canceled):
		e.Msg = "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		e.Msg, e.temporary = "deadline exceeded", true
	case errors.As(err, &ue):
		// A request that got no response: connection refused/reset, TLS, a
		// rate-limit wait that would overrun the deadline.
		e.Msg, e.temporary = c.scrub(describe(ue.Err), redact...), true
	default:
		// Building the request or decoding the answer failed: retrying the
		// same exchange gives the same result.
		e.Msg = c.scrub(describe(err), redact...)
	}
	e.Err = err
	return e
}

// serverText is the server's error text: the JSON "error"/"message" fly-go
// extracted, else the status text.
func serverText(fe *flaps.FlapsError) string {
	msg := ""
	if fe.OriginalError != nil {
		msg = fe.OriginalError.Error()
	}
	if msg == "" || strings.HasPrefix(msg, "request returned non-2xx status") {
		// fly-go puts the raw body in that message; prefer a JSON field,
		// else just the status text.
		msg = jsonErrorText(fe.ResponseBody)
		if msg == "" {
			msg = http.StatusText(fe.ResponseStatusCode)
		}
	}
	return msg
}

func jsonErrorText(body []byte) string {
	var v struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &v) != nil {
		return ""
	}
	if v.Message != "" {
		return v.Message
	}
	return v.Error
}

// scrub shortens s to one line of at most maxMsg bytes and removes the token,
// in case a server or proxy echoes request headers.
func (c *Client) scrub(s string, redact ...string) string {
	for _, secret := range append(redact, c.secrets...) {
		if secret != "" {
			s = strings.ReplaceAll(s, secret, "[redacted]")
		}
	}
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > maxMsg {
		cut := maxMsg
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

// describe reduces a transport error to its innermost cause, without the URL.
func describe(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline exceeded"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	for {
		var ue *url.Error
		if errors.As(err, &ue) && ue.Err != nil {
			err = ue.Err
			continue
		}
		break
	}
	return err.Error()
}
