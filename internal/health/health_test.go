package health

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A thousand concurrent callers cost one computation; the value is served
// until the TTL runs out, then computed again, once.
func TestMemoComputesOncePerTTL(t *testing.T) {
	var calls atomic.Int32
	release := make(chan struct{})
	var now atomic.Int64
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	m := NewMemo(2*time.Second, 0, clock, func(context.Context) (int, error) {
		<-release
		return int(calls.Add(1)), nil
	})
	var wg sync.WaitGroup
	got := make([]int, 1000)
	for i := range got {
		wg.Go(func() { got[i], _ = m.Get(context.Background()) })
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	for i, v := range got {
		if v != 1 {
			t.Fatalf("caller %d got %d, want 1 (one computation)", i, v)
		}
	}
	now.Add(int64(time.Second))
	if v, _ := m.Get(context.Background()); v != 1 || calls.Load() != 1 {
		t.Fatalf("within the TTL: %d after %d calls", v, calls.Load())
	}
	now.Add(int64(time.Second))
	if v, _ := m.Get(context.Background()); v != 2 || calls.Load() != 2 {
		t.Fatalf("after the TTL: %d after %d calls", v, calls.Load())
	}
}

// A failure is kept like a value: a database that is down is not asked by
// every request. A caller that gives up does not cancel the computation
// the others wait for.
func TestMemoKeepsErrorsAndDetachesCallers(t *testing.T) {
	var calls atomic.Int32
	down := errors.New("database unreachable")
	m := NewMemo(time.Hour, time.Second, nil, func(ctx context.Context) (bool, error) {
		calls.Add(1)
		time.Sleep(100 * time.Millisecond)
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		return false, down
	})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(10 * time.Millisecond); cancel() }()
	if _, err := m.Get(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("a caller that gave up: %v", err)
	}
	for range 3 {
		if _, err := m.Get(context.Background()); !errors.Is(err, down) {
			t.Fatalf("Get = %v, want the kept failure", err)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d computations, want 1", n)
	}
}
