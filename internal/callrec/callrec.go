// Package callrec records every external call (Fly Machines API, Hermes
// gateway) made on behalf of one unit of work, so the caller can write them as
// audit events in the same transaction as the state change they led to.
//
// A Log rides on the context: adapters name the operation and its target with
// WithOp, and the shared Transport appends one Call per HTTP attempt (retries
// included). Code that does not attach a Log pays nothing.
package callrec

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/hermes-cloud/migrator/internal/printsafe"
)

// What a Call keeps of what the other side sent. A request id is a short
// token (Fly's are 26 characters); anything longer or unprintable is not
// one, and an agent is a tenant's and may send megabytes in a header, so
// such a value is dropped and the Call says so in Note instead of storing
// it. Errors are kept to one printable line.
const (
	MaxRequestID = 128 // bytes of printable ASCII
	MaxErr       = 300 // runes
)

// Call is one HTTP attempt against an external system. It never holds a
// request or response body, a header value other than the request id, or a
// URL query: those may carry secrets or machine env.
type Call struct {
	Kind      string // e.g. "fly.update", "gateway.begin"
	Target    string // e.g. "app/machine_id"
	Method    string
	Status    int // 0 when no response arrived
	RequestID string
	Duration  time.Duration
	Err       string // transport error, without URL or secrets; one line, at most MaxErr runes
	At        time.Time
	// Note says what was cut from the answer instead of being kept, e.g.
	// "request id dropped: 1048576 bytes"; "" when nothing was.
	Note string
}

// Log collects calls; safe for concurrent use.
type Log struct {
	mu    sync.Mutex
	calls []Call
}

// Add appends c.
func (l *Log) Add(c Call) {
	l.mu.Lock()
	l.calls = append(l.calls, c)
	l.mu.Unlock()
}

// Take returns the calls recorded so far and empties the log.
func (l *Log) Take() []Call {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.calls
	l.calls = nil
	return out
}

// Len reports how many calls are held.
func (l *Log) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.calls)
}

type logKey struct{}
type opKey struct{}

type op struct{ kind, target string }

// WithLog attaches l to ctx.
func WithLog(ctx context.Context, l *Log) context.Context {
	return context.WithValue(ctx, logKey{}, l)
}

// FromContext returns the Log attached to ctx, or nil.
func FromContext(ctx context.Context) *Log {
	l, _ := ctx.Value(logKey{}).(*Log)
	return l
}

// WithOp names the operation and target of the calls made with ctx.
func WithOp(ctx context.Context, kind, target string) context.Context {
	return context.WithValue(ctx, opKey{}, op{kind, target})
}

// Observer is told of every call, whether or not a Log is attached (metrics).
type Observer func(Call)

// Transport records each round trip into the context's Log and to Observe.
// RequestIDHeaders are tried in order to find the request id of the response.
type Transport struct {
	Base             http.RoundTripper
	RequestIDHeaders []string
	Observe          Observer
	Now              func() time.Time
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	now := t.Now
	if now == nil {
		now = time.Now
	}
	start := now()
	resp, err := base.RoundTrip(req)
	o, _ := req.Context().Value(opKey{}).(op)
	c := Call{Kind: o.kind, Target: o.target, Method: req.Method, At: start, Duration: now().Sub(start)}
	if c.Kind == "" {
		c.Kind = "http"
		c.Target = req.URL.Host
	}
	if err != nil {
		c.Err = printsafe.Line(describe(err), MaxErr)
	} else {
		c.Status = resp.StatusCode
		for _, h := range t.RequestIDHeaders {
			if v := resp.Header.Get(h); v != "" {
				c.RequestID, c.Note = requestID(v)
				break
			}
		}
	}
	if l := FromContext(req.Context()); l != nil {
		l.Add(c)
	}
	if t.Observe != nil {
		t.Observe(c)
	}
	return resp, err
}

// requestID keeps v when it is a request id (at most MaxRequestID bytes of
// printable ASCII, no space); otherwise it is dropped, and the note says
// why.
func requestID(v string) (id, note string) {
	if len(v) > MaxRequestID {
		return "", fmt.Sprintf("request id dropped: %d bytes (at most %d kept)", len(v), MaxRequestID)
	}
	for i := 0; i < len(v); i++ {
		if v[i] <= ' ' || v[i] > '~' {
			return "", fmt.Sprintf("request id dropped: not printable ASCII (%d bytes)", len(v))
		}
	}
	return v, ""
}

// describe reduces a transport error to its cause without the URL, which for
// some templates could carry credentials.
func describe(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline exceeded"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	var ue interface{ Unwrap() error }
	for errors.As(err, &ue) {
		inner := ue.Unwrap()
		if inner == nil {
			break
		}
		err = inner
		if _, ok := err.(interface{ Unwrap() error }); !ok {
			break
		}
	}
	return err.Error()
}
