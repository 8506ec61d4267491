package webview

import (
	"crypto/sha256"
	"crypto/subtle"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Who may read the view. Without Config.Open every request must carry one
// of the configured credentials. A request that presents a wrong one (any
// Authorization header that does not authorize) is logged without what it
// presented and counted against its source; a source that has used up its
// AuthBurst is answered 429 with Retry-After, before its credentials are
// even looked at, until its bucket refills (one attempt every
// AuthRefill). A request with no Authorization header guesses nothing: it
// gets the 401 (and the basic-auth challenge a browser answers) and is not
// counted.

// authResult is what a request's credentials are.
type authResult int

const (
	authOK      authResult = iota
	authMissing            // no Authorization header: nothing was guessed
	authWrong              // presented, and not one of ours
)

// credentials holds SHA-256 digests of the accepted secrets, so every
// comparison is between two 32-byte values: it takes the same time
// whatever the lengths and wherever the first difference is.
type credentials struct {
	bearer     *[sha256.Size]byte // nil: bearer tokens not accepted
	user, pass *[sha256.Size]byte // nil: basic auth not accepted
}

func digest(s string) *[sha256.Size]byte {
	d := sha256.Sum256([]byte(s))
	return &d
}

func newCredentials(c Config) credentials {
	var cr credentials
	if c.BearerToken != "" {
		cr.bearer = digest(c.BearerToken)
	}
	if c.BasicUser != "" {
		cr.user, cr.pass = digest(c.BasicUser), digest(c.BasicPassword)
	}
	return cr
}

func equal(a, b *[sha256.Size]byte) int { return subtle.ConstantTimeCompare(a[:], b[:]) }

// check compares every presented credential with every accepted one, with
// no early return on the user name, so the time taken does not tell which
// part was right.
func (c credentials) check(r *http.Request) authResult {
	h := r.Header.Get("Authorization")
	if h == "" {
		return authMissing
	}
	ok := 0
	if c.bearer != nil {
		// The scheme is case-insensitive (RFC 9110, section 11.1).
		if scheme, tok, found := strings.Cut(h, " "); found && strings.EqualFold(scheme, "Bearer") {
			ok |= equal(digest(strings.TrimSpace(tok)), c.bearer)
		}
	}
	if c.user != nil {
		if u, p, found := r.BasicAuth(); found {
			ok |= equal(digest(u), c.user) & equal(digest(p), c.pass)
		}
	}
	if ok == 1 {
		return authOK
	}
	return authWrong
}

// scheme names the kind of credential a request presented, for the log:
// never the credential itself.
func scheme(r *http.Request) string {
	s, _, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	switch {
	case strings.EqualFold(s, "Bearer"):
		return "bearer"
	case strings.EqualFold(s, "Basic"):
		return "basic"
	}
	return "other"
}

// sourceOf is the key a request's wrong attempts are counted under: the
// TCP peer (X-Forwarded-For and the like are never trusted: behind `fly
// proxy` the peer is the operator's WireGuard address, and nothing else
// fronts serve). An IPv4 peer counts alone; an IPv6 peer counts with its
// /112, because Fly assigns each Machine a /112 of 6PN addresses ("6PN
// addresses in detail", https://fly.io/docs/networking/private-networking/),
// so a Machine cannot get a fresh bucket by changing its last 16 bits.
func sourceOf(r *http.Request) netip.Prefix {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Prefix{} // not TCP (tests): one shared bucket
	}
	a := ap.Addr().Unmap().WithZone("")
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	p, _ := a.Prefix(112) // cannot fail for an IPv6 address
	return p
}

// peerAddr is the peer's address as logged (its port dropped).
func peerAddr(r *http.Request) string {
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		return ap.Addr().Unmap().String()
	}
	return r.RemoteAddr
}

// failureLimiter is a token bucket of wrong attempts per source, at most
// max sources at once. A source whose bucket has refilled is as good as
// unknown and is dropped first when the table is full; if none has, the
// one heard from longest ago (a wrong attempt, or a request refused with
// 429) is dropped, so memory stays bounded whatever
// the number of sources (a source dropped that way starts afresh, which a long
// random credential makes worthless to an attacker: serve requires 16
// characters or more).
type failureLimiter struct {
	every time.Duration
	burst int
	max   int

	mu      sync.Mutex
	sources map[netip.Prefix]*source
}

type source struct {
	lim      *rate.Limiter
	lastSeen time.Time // its last wrong attempt or 429
}

func newFailureLimiter(every time.Duration, burst, maxSources int) *failureLimiter {
	return &failureLimiter{every: every, burst: burst, max: maxSources, sources: map[netip.Prefix]*source{}}
}

// wait is how long src must wait before its next attempt is looked at
// (0: it may try now).
func (l *failureLimiter) wait(src netip.Prefix, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.sources[src]
	if s == nil {
		return 0
	}
	tokens := s.lim.TokensAt(now)
	if tokens >= 1 {
		return 0
	}
	s.lastSeen = now // still trying: not the one to forget
	return time.Duration(math.Ceil((1 - tokens) * float64(l.every)))
}

// fail counts one wrong attempt of src; it reports whether src is now out
// of attempts.
func (l *failureLimiter) fail(src netip.Prefix, now time.Time) (limited bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.sources[src]
	if s == nil {
		if len(l.sources) >= l.max {
			l.evict(now)
		}
		s = &source{lim: rate.NewLimiter(rate.Every(l.every), l.burst)}
		l.sources[src] = s
	}
	s.lastSeen = now
	s.lim.AllowN(now, 1)
	return s.lim.TokensAt(now) < 1
}

// evict makes room for one more source (l.mu held).
func (l *failureLimiter) evict(now time.Time) {
	for k, s := range l.sources {
		if s.lim.TokensAt(now) >= float64(l.burst) {
			delete(l.sources, k)
		}
	}
	if len(l.sources) < l.max {
		return
	}
	var oldest netip.Prefix
	var at time.Time
	first := true
	for k, s := range l.sources {
		if first || s.lastSeen.Before(at) {
			oldest, at, first = k, s.lastSeen, false
		}
	}
	delete(l.sources, oldest)
}

// tracked is how many sources the limiter holds (tests).
func (l *failureLimiter) tracked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.sources)
}

// retryAfter is a Retry-After value: whole seconds, at least 1.
func retryAfter(d time.Duration) string {
	return strconv.Itoa(max(1, int(math.Ceil(d.Seconds()))))
}

// logPath bounds what a request's path adds to a log line.
func logPath(p string) string {
	const maxLen = 200
	if len(p) > maxLen {
		return p[:maxLen] + "…"
	}
	return p
}

// gate answers the request itself (401 or 429) unless it may read the
// view; it reports whether the view should serve it.
func (v *View) gate(w http.ResponseWriter, r *http.Request) bool {
	if v.cfg.Open {
		return true
	}
	h := w.Header()
	src, now := sourceOf(r), v.cfg.Clock.Now()
	if d := v.limiter.wait(src, now); d > 0 {
		h.Set("Retry-After", retryAfter(d))
		http.Error(w, "too many wrong credentials from this address: try again later", http.StatusTooManyRequests)
		return false
	}
	switch v.creds.check(r) {
	case authOK:
		return true
	case authWrong:
		limited := v.limiter.fail(src, now)
		v.cfg.Logger.Warn("web view: wrong credentials", "source_addr", peerAddr(r), "method", r.Method,
			"path", logPath(r.URL.Path), "scheme", scheme(r))
		if limited {
			v.cfg.Logger.Warn("web view: too many wrong credentials; answering 429 until the source's attempts refill",
				"source_addr", peerAddr(r), "source", src.String(), "retry_after", v.limiter.wait(src, now).Round(time.Second).String())
		}
	}
	if v.creds.user != nil {
		h.Set("WWW-Authenticate", `Basic realm="migrator", charset="UTF-8"`)
	}
	http.Error(w, "unauthorized", http.StatusUnauthorized)
	return false
}
