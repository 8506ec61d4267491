package notify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-retryablehttp"

	"github.com/hermes-cloud/migrator/store"
)

// Answer is what a receiver made of one request.
type Answer struct {
	// Status is the HTTP status; 0 when no answer came.
	Status int
	// Body is the start of the answer's body, one line, secrets removed.
	Body string
	// Err says why there was no answer (secrets removed); "" otherwise.
	Err string
	// RetryAfter is the receiver's Retry-After, 0 when none.
	RetryAfter time.Duration
}

// Outcome classifies an answer by what to do next.
type Outcome int

// Outcomes of a request.
const (
	Delivered Outcome = iota // 2xx
	Retry                    // 408, 425, 429, 5xx but 501, or no answer
	Refused                  // any other answer: sending it again cannot help
)

// Outcome says what the answer means for the notification.
func (a Answer) Outcome() Outcome {
	switch s := a.Status; {
	case s >= 200 && s < 300:
		return Delivered
	case s == 0, s == http.StatusRequestTimeout, s == http.StatusTooEarly, s == http.StatusTooManyRequests,
		s >= 500 && s != http.StatusNotImplemented:
		return Retry
	}
	return Refused
}

func (a Answer) String() string {
	if a.Status == 0 {
		return "no answer: " + a.Err
	}
	s := fmt.Sprintf("HTTP %d %s", a.Status, http.StatusText(a.Status))
	if a.Body != "" {
		s += ": " + a.Body
	}
	return s
}

// request is one HTTP request to a sink.
type request struct {
	url     string
	body    []byte
	headers http.Header
}

// build makes the request that delivers n to sink s.
func (c Config) build(s SinkConfig, n store.Notification) (request, error) {
	var body []byte
	var err error
	switch s.Kind {
	case Slack:
		body, err = slackBody(c, n)
	case PagerDuty:
		body, err = pagerDutyBody(c, s, n)
	case Webhook:
		body, err = webhookBody(c, n)
	default:
		err = fmt.Errorf("unknown sink kind %q", s.Kind)
	}
	if err != nil {
		return request{}, fmt.Errorf("render notification %d for sink %s: %w", n.ID, s.Name, err)
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", "migrator-notify/1")
	h.Set(HeaderIdempotencyKey, n.IdempotencyKey)
	h.Set(HeaderEvent, n.Event)
	if s.Kind == Webhook {
		// Signed when sent: a retry later is signed anew, so a receiver
		// may refuse old timestamps without refusing retries.
		keys := make([][]byte, 0, 2)
		for _, secret := range []string{s.Secret, s.PreviousSecret} {
			if secret == "" {
				continue
			}
			k, err := ParseWebhookSecret(secret)
			if err != nil {
				return request{}, fmt.Errorf("sign notification %d for sink %s: the signing secret %w", n.ID, s.Name, err)
			}
			keys = append(keys, k)
		}
		ts := c.Now().Unix()
		h.Set(HeaderWebhookID, n.IdempotencyKey)
		h.Set(HeaderWebhookTimestamp, strconv.FormatInt(ts, 10))
		h.Set(HeaderWebhookSignature, Sign(n.IdempotencyKey, ts, body, keys...))
		h.Set(HeaderTimestamp, strconv.FormatInt(ts, 10))
		h.Set(HeaderSignature, SignLegacy([]byte(s.Secret), strconv.FormatInt(ts, 10), body))
	}
	return request{url: s.URL, body: body, headers: h}, nil
}

// sender sends requests through go-retryablehttp: a few quick retries of
// 429, 5xx and network errors within one delivery job, each after the
// receiver's Retry-After when it asks for one no longer than
// InlineRetryMax; anything longer ends the job, and the outbox row says
// when to try again.
type sender struct {
	cfg    Config
	client *retryablehttp.Client
}

func newSender(cfg Config) *sender {
	// Sink URLs are credentials (a Slack hook's path, a webhook's query):
	// no proxy from the environment.
	noProxy := http.DefaultTransport.(*http.Transport).Clone()
	noProxy.Proxy = nil
	hc := &http.Client{
		Transport: noProxy,
		Timeout:   cfg.AttemptTimeout,
		// A webhook that redirects is misconfigured; following it would
		// send the body (and, for some receivers, a credential in the
		// URL) elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	c := &retryablehttp.Client{
		HTTPClient:   hc,
		RetryWaitMin: 500 * time.Millisecond,
		RetryWaitMax: cfg.InlineRetryMax,
		RetryMax:     max(cfg.InlineRetries, 0),
		// No logger: retryablehttp would log the URL, a credential.
		Logger: nil,
		CheckRetry: func(ctx context.Context, resp *http.Response, err error) (bool, error) {
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			if err != nil {
				return true, nil
			}
			a := Answer{Status: resp.StatusCode, RetryAfter: retryAfter(resp, cfg.Now())}
			if a.Outcome() != Retry {
				return false, nil
			}
			// A longer wait is the outbox's job, not this request's.
			return a.RetryAfter <= cfg.InlineRetryMax, nil
		},
		Backoff: func(minWait, maxWait time.Duration, attempt int, resp *http.Response) time.Duration {
			if d := retryAfter(resp, cfg.Now()); d > 0 {
				return min(d, maxWait)
			}
			return min(minWait<<attempt, maxWait)
		},
		ErrorHandler: retryablehttp.PassthroughErrorHandler,
	}
	return &sender{cfg: cfg, client: c}
}

// send posts req and reports the answer of the last attempt. secrets are
// removed from everything it returns.
func (s *sender) send(ctx context.Context, req request, secrets ...string) Answer {
	r, err := retryablehttp.NewRequestWithContext(ctx, http.MethodPost, req.url, bytes.NewReader(req.body))
	if err != nil {
		return Answer{Err: "cannot build the request (check the sink's URL)"}
	}
	r.Header = req.headers.Clone()
	secrets = append(secrets, req.url)
	if u, err := url.Parse(req.url); err == nil {
		secrets = append(secrets, u.Path, u.RawQuery, u.EscapedPath())
	}
	resp, err := s.client.Do(r)
	if err != nil {
		return Answer{Err: redact(noAnswer(err), secrets)}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	return Answer{Status: resp.StatusCode, Body: redact(oneLine(string(b), 200), secrets), RetryAfter: retryAfter(resp, s.cfg.Now())}
}

// noAnswer says why a request got no answer without the URL: *url.Error
// quotes it, and a Slack webhook URL is a credential.
func noAnswer(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "timed out"
	}
	return err.Error()
}

// redact removes every secret (at least 4 characters long) from s.
func redact(s string, secrets []string) string {
	for _, sec := range secrets {
		if len(sec) >= 4 {
			s = strings.ReplaceAll(s, sec, "[redacted]")
		}
	}
	return s
}

func oneLine(s string, n int) string {
	return truncate(strings.Join(strings.Fields(s), " "), n)
}

// retryAfter reads a Retry-After header (seconds or an HTTP date; RFC 9110
// 10.2.3); 0 when there is none.
func retryAfter(resp *http.Response, now time.Time) time.Duration {
	if resp == nil {
		return 0
	}
	v := strings.TrimSpace(resp.Header.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if sec, err := strconv.ParseInt(v, 10, 64); err == nil {
		if sec < 0 {
			return 0
		}
		return time.Duration(min(sec, int64(24*time.Hour/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return min(t.Sub(now), 24*time.Hour)
	}
	return 0
}

// nextTry is the wait before the attempt after the one numbered attempts
// (1 = the first): RetryMin doubling up to RetryMax, ±20 % so that
// notifications that failed together do not retry together, and never
// shorter than what the receiver asked for.
func (c Config) nextTry(attempts int, asked time.Duration) time.Duration {
	d := c.RetryMin
	for i := 1; i < attempts && d < c.RetryMax; i++ {
		d *= 2
	}
	d = min(d, c.RetryMax)
	d = time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
	return max(d, asked)
}
