package gateway

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/hermes-cloud/migrator/internal/printsafe"
)

// IsPermanent reports whether err says that repeating the call cannot help
// (e.g. 401: the agent does not accept this secret). It looks for a
// Permanent() method along the chain, never at the text.
func IsPermanent(err error) bool {
	var p interface{ Permanent() bool }
	return errors.As(err, &p) && p.Permanent()
}

// HTTPError is a non-2xx answer from the gateway.
type HTTPError struct {
	Op         string // "gateway.begin", "gateway.cancel", "gateway.status"
	Target     string // "app/machine_id"
	StatusCode int
	// Detail is the gateway's "detail" (or the start of the body), one line,
	// at most 200 characters, with the secret and the key redacted.
	Detail string
	// RetryAfter is the server's Retry-After on 429/503, when given.
	RetryAfter time.Duration
	Attempts   int
	// AuthError and AuthReason are the "error" and "reason" of a 401's
	// JSON body, when it has them: they say which layer of the dashboard
	// refused (see Explain401).
	AuthError, AuthReason string
}

// Error is one line and never holds a secret.
func (e *HTTPError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: HTTP %d %s", e.Op, e.Target, e.StatusCode, http.StatusText(e.StatusCode))
	if e.Detail != "" {
		fmt.Fprintf(&b, ": %s", e.Detail)
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfter)
	}
	if e.Attempts > 1 {
		fmt.Fprintf(&b, " (after %d attempts)", e.Attempts)
	}
	return b.String()
}

// Permanent is true for the statuses the contract says will not heal for
// that agent: 400 (bad request), 401 (unknown bearer, or no drain secret
// configured), 403 (a token of another scope), 405 (wrong method).
func (e *HTTPError) Permanent() bool {
	switch e.StatusCode {
	case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusMethodNotAllowed:
		return true
	}
	return false
}

// DecodeError is a 2xx answer that does not follow the contract: not JSON,
// not an object, a wrong type, a required field missing, or a drain the
// gateway did not confirm. It is transient (see the package doc).
type DecodeError struct {
	Op, Target string
	StatusCode int
	Reason     string
	Err        error // the json error, if any
}

func (e *DecodeError) Error() string {
	s := fmt.Sprintf("%s %s: unexpected response (HTTP %d): %s", e.Op, e.Target, e.StatusCode, e.Reason)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *DecodeError) Unwrap() error { return e.Err }

// Permanent is false: a half-started server or a proxy may answer during a
// recreate, and both drain actions are idempotent.
func (e *DecodeError) Permanent() bool { return false }

// CallError is a call that got no usable answer: transport errors, attempt
// timeouts, or the context ending (possibly while waiting to retry).
type CallError struct {
	Op, Target string
	Attempts   int
	LastStatus int // status of the last answer, 0 if none
	Err        error
}

func (e *CallError) Error() string {
	s := fmt.Sprintf("%s %s: ", e.Op, e.Target)
	if e.Attempts > 1 {
		s += fmt.Sprintf("gave up after %d attempts", e.Attempts)
		if e.LastStatus != 0 {
			s += fmt.Sprintf(" (last: HTTP %d)", e.LastStatus)
		}
		s += ": "
	}
	// The cause may quote what the agent sent (net/textproto quotes a
	// malformed header line whole): one bounded line.
	return s + oneLine(e.Err.Error())
}

func (e *CallError) Unwrap() error { return e.Err }

// Permanent is false: the network, the agent or the context may recover.
func (e *CallError) Permanent() bool { return false }

// TargetError is a target the URL template cannot be expanded for.
type TargetError struct {
	Op, Target string
	Reason     string
}

func (e *TargetError) Error() string {
	op := e.Op
	if op == "" {
		op = "gateway"
	}
	return fmt.Sprintf("%s %s: %s", op, e.Target, e.Reason)
}

// Permanent is true: the same target expands the same way every time.
func (e *TargetError) Permanent() bool { return true }

const maxDetail = 200

// oneLine makes s printable on one line of at most maxDetail runes
// (package printsafe), with every string in redact replaced by
// "[redacted]".
func oneLine(s string, redact ...string) string {
	// Clean first, then redact, then cut: a secret split by a control
	// character or sequence would otherwise survive the redaction and be
	// joined again by the cleaning.
	s = printsafe.Line(s, 0)
	for _, r := range redact {
		if r != "" {
			s = strings.ReplaceAll(s, r, "[redacted]")
		}
	}
	return printsafe.Cut(s, maxDetail)
}
