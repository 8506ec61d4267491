package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/hashicorp/go-retryablehttp"

	"github.com/hermes-cloud/migrator/internal/callrec"
	"github.com/hermes-cloud/migrator/internal/drainsecret"
)

// Routes, appended to the expanded URL template.
const (
	drainRoute  = "/api/gateway/drain"
	statusRoute = "/api/status"
)

// Operation names, used as callrec kinds and in errors.
const (
	OpBegin  = "gateway.begin"
	OpCancel = "gateway.cancel"
	OpStatus = "gateway.status"
)

// maxBody caps how much of an answer is read; /api/status is a few KiB.
const maxBody = 1 << 20

// Client talks to the dashboards of many agents; safe for concurrent use.
type Client struct {
	tmpl          urlTemplate
	key           drainKey
	http          *retryablehttp.Client
	retryAfterMax time.Duration
}

// drainKey prints as [redacted] under every fmt verb, so a Client dumped
// with %+v does not show the key.
type drainKey []byte

func (drainKey) Format(f fmt.State, _ rune) { io.WriteString(f, "[redacted]") }

// New validates cfg (after defaults) and returns a Client.
func New(cfg Config) (*Client, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	tmpl, err := parseTemplate(cfg.URLTemplate)
	if err != nil {
		return nil, err
	}
	base := cfg.Transport
	switch t := base.(type) {
	case nil:
		base = boundedTransport(nil)
	case *http.Transport:
		base = boundedTransport(t)
	}
	c := &Client{
		tmpl:          tmpl,
		key:           bytes.Clone(cfg.DrainKey),
		retryAfterMax: cfg.RetryAfterMax,
	}
	rt := &attemptTransport{
		base: &callrec.Transport{Base: base, RequestIDHeaders: []string{"X-Request-Id"}, Observe: cfg.Observe},
		log:  cfg.Logger,
		key:  c.key,
	}
	c.http = &retryablehttp.Client{
		HTTPClient: &http.Client{
			Transport: rt,
			Timeout:   cfg.CallTimeout,
			// A redirect could carry the bearer elsewhere; the dashboard
			// never redirects these routes, so an answer 3xx is an error.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		// No retryablehttp logging: attemptTransport logs each attempt
		// without URL, headers or bodies.
		Logger:       nil,
		RetryWaitMin: cfg.RetryWaitMin,
		RetryWaitMax: cfg.RetryWaitMax,
		RetryMax:     cfg.RetryMax,
		CheckRetry:   c.checkRetry,
		Backoff:      backoff,
		ErrorHandler: lastResponse,
	}
	return c, nil
}

// BaseURL expands the URL template for t (values path-escaped, no trailing
// slash). The routes are appended to it.
func (c *Client) BaseURL(t Target) (string, error) {
	if t.App == "" {
		return "", &TargetError{Target: t.String(), Reason: "no app"}
	}
	return c.tmpl.expand(t)
}

type drainRequest struct {
	Action               string `json:"action"`
	SuppressNotification bool   `json:"suppress_notification"`
}

type cancelRequest struct {
	Action string `json:"action"`
}

// Begin asks the agent to drain: the gateway writes its marker and, within
// about a second, stops taking new turns. quiet sets suppress_notification
// (skip the home-channel broadcast at the coming shutdown). Begin again to
// refresh the marker's age; last writer wins. Check Echo.Matches(quiet).
func (c *Client) Begin(ctx context.Context, t Target, quiet bool) (Echo, error) {
	status, data, err := c.do(ctx, OpBegin, t, http.MethodPost, drainRoute,
		drainRequest{Action: "drain", SuppressNotification: quiet})
	if err != nil {
		return Echo{}, err
	}
	var r struct {
		OK          *bool   `json:"ok"`
		Action      string  `json:"action"`
		RequestedAt *string `json:"requested_at"`
		Draining    *bool   `json:"draining"`
		Suppress    *bool   `json:"suppress_notification"`
	}
	if err := decodeObject(data, &r); err != nil {
		return Echo{}, &DecodeError{Op: OpBegin, Target: t.String(), StatusCode: status, Reason: "drain answer is not the contract's JSON", Err: err}
	}
	switch {
	case r.OK != nil && !*r.OK:
		return Echo{}, &DecodeError{Op: OpBegin, Target: t.String(), StatusCode: status, Reason: `gateway answered "ok": false`}
	case r.Draining == nil:
		return Echo{}, &DecodeError{Op: OpBegin, Target: t.String(), StatusCode: status, Reason: `drain answer has no "draining" field`}
	case !*r.Draining:
		return Echo{}, &DecodeError{Op: OpBegin, Target: t.String(), StatusCode: status, Reason: `gateway answered "draining": false`}
	}
	e := Echo{Draining: true, RawAction: field(r.Action, maxWord)}
	if r.Suppress != nil {
		e.SuppressEchoed, e.SuppressNotification = true, *r.Suppress
	}
	if r.RequestedAt != nil {
		e.RequestedAt = parseISO(*r.RequestedAt)
	}
	return e, nil
}

// Cancel removes the agent's drain marker so it takes turns again.
// wasDraining reports whether a marker existed. Idempotent.
func (c *Client) Cancel(ctx context.Context, t Target) (wasDraining bool, err error) {
	status, data, err := c.do(ctx, OpCancel, t, http.MethodPost, drainRoute, cancelRequest{Action: "cancel"})
	if err != nil {
		return false, err
	}
	var r struct {
		OK          *bool `json:"ok"`
		WasDraining *bool `json:"was_draining"`
	}
	if err := decodeObject(data, &r); err != nil {
		return false, &DecodeError{Op: OpCancel, Target: t.String(), StatusCode: status, Reason: "cancel answer is not the contract's JSON", Err: err}
	}
	switch {
	case r.OK != nil && !*r.OK:
		return false, &DecodeError{Op: OpCancel, Target: t.String(), StatusCode: status, Reason: `gateway answered "ok": false`}
	case r.WasDraining == nil:
		return false, &DecodeError{Op: OpCancel, Target: t.String(), StatusCode: status, Reason: `cancel answer has no "was_draining" field`}
	}
	return *r.WasDraining, nil
}

// Status reads the agent's public /api/status (no credentials sent).
func (c *Client) Status(ctx context.Context, t Target) (Status, error) {
	status, data, err := c.do(ctx, OpStatus, t, http.MethodGet, statusRoute, nil)
	if err != nil {
		return Status{}, err
	}
	var r struct {
		Running             *bool    `json:"gateway_running"`
		State               *string  `json:"gateway_state"`
		ActiveAgents        *int     `json:"active_agents"`
		Version             *string  `json:"version"`
		RestartDrainTimeout *float64 `json:"restart_drain_timeout"`
		// Read leniently: a shape this client does not know is left out,
		// never an error (they judge the new image, not quiescence).
		Platforms  json.RawMessage `json:"gateway_platforms"`
		Overall    json.RawMessage `json:"overall"`
		Nous       json.RawMessage `json:"nous_session_valid"`
		ExitReason json.RawMessage `json:"gateway_exit_reason"`
		Sessions   json.RawMessage `json:"active_sessions"`
	}
	if err := decodeObject(data, &r); err != nil {
		return Status{}, &DecodeError{Op: OpStatus, Target: t.String(), StatusCode: status, Reason: "status is not the contract's JSON", Err: err}
	}
	// A missing gateway_running or active_agents must not default to a zero
	// that reads as quiescent.
	switch {
	case r.Running == nil:
		return Status{}, &DecodeError{Op: OpStatus, Target: t.String(), StatusCode: status, Reason: `status has no "gateway_running"`}
	case *r.Running && r.ActiveAgents == nil:
		return Status{}, &DecodeError{Op: OpStatus, Target: t.String(), StatusCode: status, Reason: `status of a running gateway has no "active_agents"`}
	case r.ActiveAgents != nil && *r.ActiveAgents < 0:
		return Status{}, &DecodeError{Op: OpStatus, Target: t.String(), StatusCode: status, Reason: fmt.Sprintf(`"active_agents" is %d`, *r.ActiveAgents)}
	}
	// Every string is cleaned and bounded here, once (bounds.go).
	var b bounds
	s := Status{Running: *r.Running}
	if r.State != nil {
		s.State = b.clean(*r.State, maxWord)
	}
	if r.ActiveAgents != nil {
		s.ActiveAgents = *r.ActiveAgents
	}
	if r.Version != nil {
		s.Version = b.clean(*r.Version, maxWord)
	}
	if r.RestartDrainTimeout != nil {
		s.RestartDrainTimeout = *r.RestartDrainTimeout
	}
	s.Platforms = decodePlatforms(r.Platforms, &b)
	s.Overall, s.NousSession = b.clean(jsonString(r.Overall), maxWord), b.clean(jsonString(r.Nous), maxWord)
	s.ExitReason = b.clean(jsonString(r.ExitReason), maxText)
	s.Oversized = b.oversized()
	var sessions int
	if len(r.Sessions) > 0 && json.Unmarshal(r.Sessions, &sessions) == nil && sessions >= 0 {
		// Read leniently too: a negative or non-integer count is left out.
		s.ActiveSessions = &sessions
	}
	return s, nil
}

// callState follows one operation across its attempts (retryablehttp runs
// them one after another on the caller's goroutine).
type callState struct {
	op         string
	t          Target
	attempts   int
	lastStatus int
}

type stateKey struct{}

// do runs one operation with retries. body, when not nil, is sent as JSON
// with the target's bearer; nil means a GET without credentials. It returns
// the status and body of a 2xx answer, or a typed error.
func (c *Client) do(ctx context.Context, op string, t Target, method, route string, body any) (int, []byte, error) {
	base, err := c.BaseURL(t)
	if err != nil {
		var te *TargetError
		if errors.As(err, &te) {
			te.Op = op
		}
		return 0, nil, err
	}
	// Derived for every call, not only the authenticated ones: an agent that
	// echoes its own secret in an error page must not get it into our error.
	secret := drainsecret.Derive(c.key, t.App)
	var reqBody any // stays a nil interface for a GET: retryablehttp then sends no body
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return 0, nil, fmt.Errorf("%s %s: encode request: %w", op, t, err)
		}
		reqBody = raw
	}
	st := &callState{op: op, t: t}
	ctx = callrec.WithOp(ctx, op, t.String())
	ctx = context.WithValue(ctx, stateKey{}, st)
	req, err := retryablehttp.NewRequestWithContext(ctx, method, base+route, reqBody)
	if err != nil {
		return 0, nil, &CallError{Op: op, Target: t.String(), Err: stripURL(err)}
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "migrator")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, &CallError{Op: op, Target: t.String(), Attempts: st.attempts, LastStatus: st.lastStatus, Err: stripURL(err)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return 0, nil, &CallError{Op: op, Target: t.String(), Attempts: st.attempts, LastStatus: resp.StatusCode, Err: fmt.Errorf("read answer: %w", stripURL(err))}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		he := &HTTPError{Op: op, Target: t.String(), StatusCode: resp.StatusCode, Attempts: st.attempts,
			Detail: detail(data, secret, string(c.key))}
		if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
			he.RetryAfter, _ = retryAfter(resp.Header)
		}
		if resp.StatusCode == http.StatusUnauthorized {
			he.AuthError, he.AuthReason = authFields(data)
		}
		return 0, nil, he
	}
	if len(data) > maxBody {
		return 0, nil, &DecodeError{Op: op, Target: t.String(), StatusCode: resp.StatusCode, Reason: "answer larger than 1 MiB"}
	}
	return resp.StatusCode, data, nil
}

// checkRetry is the retry policy: transport errors (except the ones that
// cannot heal, such as a bad scheme), 5xx and 429 are retried; a Retry-After
// longer than RetryAfterMax or than what is left of the context stops at once
// so the caller gets the 429/503 with its RetryAfter instead of a dead wait.
func (c *Client) checkRetry(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if err != nil {
		return retryablehttp.DefaultRetryPolicy(ctx, resp, err)
	}
	switch code := resp.StatusCode; {
	case code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable:
		if d, ok := retryAfter(resp.Header); ok {
			if d > c.retryAfterMax {
				return false, nil
			}
			if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
				return false, nil
			}
		}
		return true, nil
	case code >= 500:
		return true, nil
	}
	return false, nil
}

// lastResponse hands back the last answer when retries run out, so do can
// classify it; a response that comes with an error is closed.
func lastResponse(resp *http.Response, err error, _ int) (*http.Response, error) {
	if err != nil {
		if resp != nil {
			resp.Body.Close()
		}
		return nil, err
	}
	return resp, nil
}

// backoff waits for Retry-After on 429/503, else exponentially with jitter.
func backoff(min, max time.Duration, attempt int, resp *http.Response) time.Duration {
	if resp != nil && (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) {
		if d, ok := retryAfter(resp.Header); ok {
			return d
		}
	}
	return jittered(min, max, attempt, rand.Int64N)
}

// jittered returns a wait in [max(min, d/2), d] where d = min·2^attempt
// capped at max: exponential growth, spread so that agents failing together
// do not retry together.
func jittered(min, max time.Duration, attempt int, randN func(int64) int64) time.Duration {
	d := min
	for i := 0; i < attempt && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	lo := d / 2
	if lo < min {
		lo = min
	}
	if d <= lo {
		return d
	}
	return lo + time.Duration(randN(int64(d-lo)+1))
}

// retryAfter parses Retry-After in seconds or as an HTTP date.
func retryAfter(h http.Header) (time.Duration, bool) {
	v := h.Get("Retry-After")
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0, false
		}
		return time.Duration(n) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		d := time.Until(t)
		if d < 0 {
			d = 0
		}
		return d, true
	}
	return 0, false
}

// decodeObject unmarshals a JSON object; "null", arrays and scalars are
// refused (json.Unmarshal would accept null into a struct silently).
func decodeObject(data []byte, v any) error {
	trimmed := bytes.TrimSpace(data)
	switch {
	case len(trimmed) == 0:
		return errors.New("empty body")
	case trimmed[0] != '{':
		return errors.New("not a JSON object")
	}
	return json.Unmarshal(trimmed, v)
}

// detail extracts a one-line error description from an error answer:
// FastAPI's "detail", or the start of the body.
func detail(data []byte, redact ...string) string {
	var r struct {
		Detail json.RawMessage `json:"detail"`
	}
	s := string(data)
	if decodeObject(data, &r) == nil && len(r.Detail) > 0 {
		var str string
		if json.Unmarshal(r.Detail, &str) == nil {
			s = str
		} else {
			s = string(r.Detail)
		}
	}
	return oneLine(s, redact...)
}

// parseISO reads Python's datetime.isoformat(); zero when unparseable.
func parseISO(s string) time.Time {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UTC()
	}
	if t, err := time.Parse("2006-01-02T15:04:05.999999999", s); err == nil {
		return t // no offset: the contract says UTC
	}
	return time.Time{}
}

// stripURL drops the URL net/http puts in its errors: the report names the
// operation and target instead, and a template could one day carry
// something private.
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		return ue.Err
	}
	return err
}

// attemptTransport logs every attempt at debug level (no URL, header or
// body) and counts attempts for the error report.
type attemptTransport struct {
	base http.RoundTripper
	log  *slog.Logger
	key  drainKey
}

func (t *attemptTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	st, _ := req.Context().Value(stateKey{}).(*callState)
	start := time.Now()
	resp, err := t.base.RoundTrip(req)
	if st == nil {
		return resp, err
	}
	st.attempts++
	attrs := []slog.Attr{
		slog.String("op", st.op),
		slog.String("app", st.t.App),
		slog.String("machine_id", st.t.MachineID),
		slog.String("method", req.Method),
		slog.Int("attempt", st.attempts),
		slog.Duration("duration", time.Since(start)),
	}
	if err != nil {
		st.lastStatus = 0
		attrs = append(attrs, slog.String("error", oneLine(stripURL(err).Error(), string(t.key))))
	} else {
		st.lastStatus = resp.StatusCode
		attrs = append(attrs, slog.Int("status", resp.StatusCode))
	}
	t.log.LogAttrs(req.Context(), slog.LevelDebug, "gateway call", attrs...)
	return resp, err
}
