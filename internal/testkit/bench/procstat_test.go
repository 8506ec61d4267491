package bench

import (
	"os"
	"testing"
	"time"
)

func TestProcessCounters(t *testing.T) {
	u0, s0 := processCPU()
	tree0 := treeCPU(os.Getpid())
	// Burn 30 ms of CPU (three of /proc's 10 ms ticks), however busy the host.
	x := 0
	u1, s1 := u0, s0
	for start := time.Now(); u1+s1-u0-s0 < 30*time.Millisecond && time.Since(start) < 10*time.Second; {
		for range 100000 {
			x++
		}
		u1, s1 = processCPU()
	}
	if u1+s1 <= u0+s0 {
		t.Errorf("process CPU did not grow: %s → %s", u0+s0, u1+s1)
	}
	if tree1 := treeCPU(os.Getpid()); tree1 <= tree0 {
		t.Errorf("tree CPU did not grow: %s → %s (%d)", tree0, tree1, x)
	}
	if treeCPU(0) != 0 || postmasterPID(t.TempDir()) != 0 {
		t.Error("unknown server: want 0")
	}
	if rss := peakRSS(); rss < 1<<20 {
		t.Errorf("peak RSS %d bytes", rss)
	}
}

func TestStatusField(t *testing.T) {
	status := []byte("Name:\tbench\nVmHWM:\t   12345 kB\nThreads:\t7\n")
	if v, ok := statusField(status, "VmHWM:"); !ok || v != 12345*1024 {
		t.Errorf("VmHWM = %d %t", v, ok)
	}
	if v, ok := statusField(status, "Threads:"); !ok || v != 7 {
		t.Errorf("Threads = %d %t", v, ok)
	}
	if _, ok := statusField(status, "VmRSS:"); ok {
		t.Error("VmRSS found in a status without it")
	}
}
