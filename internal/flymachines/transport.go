package flymachines

import (
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/hermes-cloud/migrator/internal/callrec"
	"github.com/hermes-cloud/migrator/internal/clock"
)

// The transport stack, outermost first. fly-go puts its own layers (otel,
// rehttp retries of 502/503 and network errors) above it, so every attempt
// fly-go makes passes through all of these:
//
//	retryAfter  429 → wait Retry-After, re-send (bounded count, ctx)
//	limiter     token bucket per (machine, action): wait, never exceed
//	callrec     one audit record per attempt
//	rewrite     BaseURL scheme+host(+path prefix)
//	base        cfg.Transport
var (
	_ http.RoundTripper = (*retryAfterTransport)(nil)
	_ http.RoundTripper = (*limitTransport)(nil)
	_ http.RoundTripper = (*rewriteTransport)(nil)
	_ http.RoundTripper = (*callrec.Transport)(nil)
)

func newTransport(cfg *Config, base *url.URL) http.RoundTripper {
	rt := cfg.Transport
	if base != nil {
		rt = &rewriteTransport{next: rt, base: base}
	}
	rt = &callrec.Transport{
		Base:             rt,
		RequestIDHeaders: []string{"Fly-Request-Id"},
		Observe:          cfg.Observe,
	}
	rt = &limitTransport{next: rt, limits: newLimiters(*cfg.RateLimits, cfg.Clock)}
	return &retryAfterTransport{next: rt, max: cfg.Max429Retries, clock: cfg.Clock, log: cfg.Logger}
}

// rewriteTransport points requests at BaseURL. fly-go has no base-URL option
// and drops any path of FLY_FLAPS_BASE_URL; here a path is kept as a prefix.
type rewriteTransport struct {
	next http.RoundTripper
	base *url.URL
}

func (t *rewriteTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	r := req.Clone(req.Context())
	u := *req.URL
	u.Scheme, u.Host = t.base.Scheme, t.base.Host
	if prefix := strings.TrimSuffix(t.base.Path, "/"); prefix != "" {
		u.Path = prefix + u.Path
		if u.RawPath != "" {
			u.RawPath = strings.TrimSuffix(t.base.EscapedPath(), "/") + u.RawPath
		}
	}
	r.URL, r.Host = &u, ""
	return t.next.RoundTrip(r)
}

// limitKind selects which of RateLimits applies to a request.
type limitKind int

const (
	limitNone limitKind = iota
	limitAction
	limitGet
	limitList
)

// routeOf derives the rate-limit bucket of a request from its method and
// path: Fly counts per (machine, action), Get Machine separately, and lists
// per app (org for the app list). Unknown paths are not limited.
func routeOf(method string, u *url.URL) (key string, kind limitKind) {
	segs := strings.Split(strings.Trim(u.Path, "/"), "/")
	i := 0
	for i+1 < len(segs) && !(segs[i] == "v1" && segs[i+1] == "apps") {
		i++
	}
	if i+1 >= len(segs) {
		return "", limitNone
	}
	s := segs[i+1:] // "apps", app, "machines", id, action...
	switch {
	case len(s) == 1:
		return "org:" + u.Query().Get("org_slug") + " " + method + " apps", limitList
	case len(s) == 2:
		return "app:" + s[1] + " " + method + " app", limitAction
	case s[2] != "machines":
		return "app:" + s[1] + " " + method + " " + s[2], limitAction
	case len(s) == 3:
		return "app:" + s[1] + " " + method + " machines", limitList
	case len(s) == 4:
		if method == http.MethodGet {
			return "m:" + s[1] + "/" + s[3] + " get", limitGet
		}
		return "m:" + s[1] + "/" + s[3] + " " + method, limitAction
	default:
		return "m:" + s[1] + "/" + s[3] + " " + method + " " + s[4], limitAction
	}
}

// limiters holds one token bucket per route key, created on first use.
type limiters struct {
	mu     sync.Mutex
	m      map[string]*rate.Limiter
	limits RateLimits
	scale  float64 // wall-clock events per clock-timeline event rate
}

// maxIdleLimiters bounds the map: beyond it, full (idle) buckets are dropped,
// which loses nothing since a new bucket starts full.
const maxIdleLimiters = 4096

func newLimiters(l RateLimits, clk clock.Clock) *limiters {
	// Limits are per second of the clock's timeline; the limiter runs on
	// the wall clock, so scale the rate (a 100× clock allows 100×/s of wall).
	scale := 1.0
	if w := clk.Wall(time.Second); w > 0 {
		scale = float64(time.Second) / float64(w)
	}
	return &limiters{m: make(map[string]*rate.Limiter), limits: l, scale: scale}
}

func (l *limiters) get(key string, kind limitKind) *rate.Limiter {
	var lim Limit
	switch kind {
	case limitGet:
		lim = l.limits.Get
	case limitList:
		lim = l.limits.List
	case limitAction:
		lim = l.limits.Action
	default:
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if rl, ok := l.m[key]; ok {
		return rl
	}
	if len(l.m) >= maxIdleLimiters {
		now := time.Now()
		for k, rl := range l.m {
			if rl.TokensAt(now) >= float64(rl.Burst()) {
				delete(l.m, k)
			}
		}
	}
	rl := rate.NewLimiter(lim.Rate*rate.Limit(l.scale), lim.Burst)
	l.m[key] = rl
	return rl
}

// limitTransport waits for a token before each attempt, bounded by the
// request's context: a wait that would overrun the deadline fails at once.
type limitTransport struct {
	next   http.RoundTripper
	limits *limiters
}

func (t *limitTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if rl := t.limits.get(routeOf(req.Method, req.URL)); rl != nil {
		if err := rl.Wait(req.Context()); err != nil {
			closeBody(req)
			return nil, err
		}
	}
	return t.next.RoundTrip(req)
}

// retryAfterTransport re-sends a request answered 429 after the server's
// Retry-After (fly-go neither retries 429 nor keeps the header). It gives up,
// returning the 429, when the wait would overrun the context's deadline or
// after max re-sends.
type retryAfterTransport struct {
	next  http.RoundTripper
	max   int
	clock clock.Clock
	log   *slog.Logger
}

func (t *retryAfterTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	hasBody := req.Body != nil && req.Body != http.NoBody
	for attempt := 0; ; attempt++ {
		r := req
		if attempt > 0 {
			r = req.Clone(ctx)
			if hasBody {
				body, err := req.GetBody()
				if err != nil {
					return nil, err
				}
				r.Body = body
			}
		}
		resp, err := t.next.RoundTrip(r)
		if err != nil || resp.StatusCode != http.StatusTooManyRequests || attempt >= t.max {
			return resp, err
		}
		if hasBody && req.GetBody == nil {
			return resp, nil // cannot replay the body
		}
		d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), t.clock.Now())
		if !ok {
			d = time.Second
		}
		d = min(d, maxRetryAfter)
		wall := t.clock.Wall(d)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wall {
			return resp, nil
		}
		t.log.Debug("fly answered 429; waiting before re-sending",
			"method", req.Method, "path", req.URL.Path, "retry_after", d, "attempt", attempt+1)
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		_ = resp.Body.Close()
		timer := time.NewTimer(wall)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, ctx.Err()
		case <-timer.C:
		}
	}
}

// parseRetryAfter reads Retry-After as delay-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		if secs > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter, true
		}
		return time.Duration(secs) * time.Second, true
	}
	if at, err := http.ParseTime(v); err == nil {
		return max(at.Sub(now), 0), true
	}
	return 0, false
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}
