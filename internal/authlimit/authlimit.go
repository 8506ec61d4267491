// Package authlimit slows down guessing of a credential over HTTP: a
// token bucket of wrong attempts per source address, bounded in memory
// whatever the number of sources. The web view (internal/webview) and the
// API (internal/api) share it: a source that has used up its burst is
// answered 429 with Retry-After before its credentials are even looked
// at, until its bucket refills.
//
// A source is the TCP peer (X-Forwarded-For and the like are never
// trusted: behind `fly proxy` the peer is the operator's WireGuard
// address, and nothing else fronts serve). An IPv4 peer counts alone; an
// IPv6 peer counts with its /112, because Fly assigns each Machine a /112
// of 6PN addresses ("6PN addresses in detail",
// https://fly.io/docs/networking/private-networking/), so a Machine
// cannot get a fresh bucket by changing its last 16 bits.
package authlimit

import (
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// SourceOf is the key a request's wrong attempts are counted under.
func SourceOf(r *http.Request) netip.Prefix {
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

// PeerAddr is the peer's address as logged (its port dropped).
func PeerAddr(r *http.Request) string {
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		return ap.Addr().Unmap().String()
	}
	return r.RemoteAddr
}

// Limiter is a token bucket of wrong attempts per source, at most max
// sources at once. A source whose bucket has refilled is as good as
// unknown and is dropped first when the table is full; if none has, the
// one heard from longest ago (a wrong attempt, or a request refused with
// 429) is dropped, so memory stays bounded whatever the number of sources
// (a source dropped that way starts afresh, which a long random
// credential makes worthless to an attacker). Safe for concurrent use.
type Limiter struct {
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

// New is a limiter that lets each source burst wrong attempts, then one
// every period, tracking at most maxSources sources.
func New(every time.Duration, burst, maxSources int) *Limiter {
	return &Limiter{every: every, burst: burst, max: maxSources, sources: map[netip.Prefix]*source{}}
}

// Wait is how long src must wait before its next attempt is looked at
// (0: it may try now).
func (l *Limiter) Wait(src netip.Prefix, now time.Time) time.Duration {
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

// Fail counts one wrong attempt of src; it reports whether src is now out
// of attempts.
func (l *Limiter) Fail(src netip.Prefix, now time.Time) (limited bool) {
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
func (l *Limiter) evict(now time.Time) {
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

// Tracked is how many sources the limiter holds.
func (l *Limiter) Tracked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.sources)
}

// RetryAfter is a Retry-After value: whole seconds, at least 1.
func RetryAfter(d time.Duration) string {
	return strconv.Itoa(max(1, int(math.Ceil(d.Seconds()))))
}
