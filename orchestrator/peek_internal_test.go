package orchestrator

import (
	"testing"
	"time"
)

// The pause between two looks at a busy agent doubles from the poll
// interval to the cap, with ±20 % jitter: the bound on status reads the
// docs state (at most 1.25 reads a minute per busy agent once backed
// off) rests on the shortest capped pause being 48 s.
func TestPeekPause(t *testing.T) {
	t.Parallel()
	const poll, most = 5 * time.Second, time.Minute
	for _, c := range []struct {
		peeks int
		u     float64
		want  time.Duration
	}{
		{1, 0.5, 5 * time.Second},
		{2, 0.5, 10 * time.Second},
		{3, 0.5, 20 * time.Second},
		{4, 0.5, 40 * time.Second},
		{5, 0.5, time.Minute},
		{50, 0.5, time.Minute},
		{1, 0, 4 * time.Second},
		{5, 0, 48 * time.Second},
		{9, 0.999999, 72*time.Second - 24*time.Microsecond},
		{1000, 0, 48 * time.Second}, // no overflow however long it waits
	} {
		if got := peekPause(poll, most, c.peeks, c.u); got != c.want {
			t.Errorf("peekPause(%v, %v, %d, %v) = %v, want %v", poll, most, c.peeks, c.u, got, c.want)
		}
	}
	// A cap below the poll interval wins.
	if got := peekPause(5*time.Second, 2*time.Second, 1, 0.5); got != 2*time.Second {
		t.Errorf("cap below the poll interval: %v", got)
	}
}
