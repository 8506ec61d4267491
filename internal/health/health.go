// Package health keeps serve's open endpoints cheap. /readyz and /metrics
// answer anyone on the private network, every customer's agent included (an
// agent runs its tenant's tools and shell commands), and each used to cost
// database queries: a loop of requests could take the connections the
// workers need. Here a value read from the database is computed at most once
// per TTL, by one caller at a time (Memo: a cache in front of
// golang.org/x/sync/singleflight), however many requests ask for it; serve
// also gives these reads a pool of their own (cli's serve.go).
package health

import (
	"context"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// DefaultTTL is how long a memoised value is served: short against a
// probe's period (Fly checks every 10-15 s, Prometheus scrapes every 15 s
// or more), long against a flood's.
const DefaultTTL = 2 * time.Second

// Memo is a value at most TTL old. The first caller after it expires
// recomputes it; callers meanwhile wait for that one rather than start their
// own. A failed computation is kept as long as a good one (a database that
// is down is not asked again by every request). Safe for concurrent use.
type Memo[T any] struct {
	ttl     time.Duration
	timeout time.Duration
	fn      func(context.Context) (T, error)
	now     func() time.Time
	group   singleflight.Group

	mu  sync.Mutex
	at  time.Time // when val and err were computed; zero: never
	val T
	err error
}

// NewMemo memoises fn for ttl (0: DefaultTTL). Each computation runs with
// timeout (0: none) on a context of its own, detached from the caller's
// cancellation, so a caller that gives up does not fail it for the others.
// now is the clock (nil: time.Now).
func NewMemo[T any](ttl, timeout time.Duration, now func() time.Time, fn func(context.Context) (T, error)) *Memo[T] {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	if now == nil {
		now = time.Now
	}
	return &Memo[T]{ttl: ttl, timeout: timeout, fn: fn, now: now}
}

// Get returns the value, computing it when it is older than the TTL. A
// caller whose ctx ends first gets ctx's error; the computation goes on
// for the others.
func (m *Memo[T]) Get(ctx context.Context) (T, error) {
	m.mu.Lock()
	if !m.at.IsZero() && m.now().Sub(m.at) < m.ttl {
		v, err := m.val, m.err
		m.mu.Unlock()
		return v, err
	}
	m.mu.Unlock()
	ch := m.group.DoChan("", func() (any, error) {
		cctx := context.WithoutCancel(ctx)
		if m.timeout > 0 {
			var cancel context.CancelFunc
			cctx, cancel = context.WithTimeout(cctx, m.timeout)
			defer cancel()
		}
		v, err := m.fn(cctx)
		m.mu.Lock()
		m.at, m.val, m.err = m.now(), v, err
		m.mu.Unlock()
		return v, err
	})
	select {
	case r := <-ch:
		v, _ := r.Val.(T)
		return v, r.Err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}
