package bench

import (
	"bufio"
	"bytes"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// processCPU is this process's user and system CPU time so far.
func processCPU() (user, sys time.Duration) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

// threadCPU is the CPU time of the calling OS thread.
func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// cpuMeter adds up the CPU time spent inside an HTTP handler: the handler's
// goroutine is locked to its thread for the request, so the thread's CPU
// clock counts that goroutine alone. The server's own connection handling
// (reading, parsing, writing) happens outside and is not counted.
type cpuMeter struct{ ns atomic.Int64 }

func (m *cpuMeter) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runtime.LockOSThread()
		start := threadCPU()
		defer func() {
			m.ns.Add(int64(threadCPU() - start))
			runtime.UnlockOSThread()
		}()
		h.ServeHTTP(w, r)
	})
}

func (m *cpuMeter) total() time.Duration { return time.Duration(m.ns.Load()) }

// resetPeakRSS returns freed memory to the OS and resets the kernel's
// high-water mark of this process's resident set (VmHWM), so peakRSS
// reports the peak of what follows. false when the kernel refuses.
func resetPeakRSS() bool {
	debug.FreeOSMemory()
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

// peakRSS is VmHWM from /proc/self/status (bytes), or getrusage's maxrss
// (the peak over the process's life) when /proc cannot be read.
func peakRSS() int64 {
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		if v, ok := statusField(b, "VmHWM:"); ok {
			return v
		}
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Maxrss * 1024
}

// statusField reads a "Name:   123 kB" line of /proc/self/status in bytes.
func statusField(status []byte, name string) (int64, bool) {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), name)
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0, false
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, false
		}
		if len(f) > 1 && f[1] == "kB" {
			v *= 1024
		}
		return v, true
	}
	return 0, false
}

// clockTicks is the kernel's USER_HZ, the unit of /proc/PID/stat times
// (100 on every Linux architecture Go supports).
const clockTicks = 100

// treeCPU is the CPU time of process pid, of the children it has reaped,
// and of its live children: for a PostgreSQL postmaster, the whole server.
// 0 when /proc cannot tell.
func treeCPU(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	own, ok := procStat(pid)
	if !ok {
		return 0
	}
	total := own.utime + own.stime + own.cutime + own.cstime
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil || child == pid {
			continue
		}
		if st, ok := procStat(child); ok && st.ppid == int64(pid) {
			total += st.utime + st.stime
		}
	}
	return time.Duration(total) * time.Second / clockTicks
}

type statFields struct{ ppid, utime, stime, cutime, cstime int64 }

// procStat reads the fields of /proc/PID/stat that treeCPU needs.
func procStat(pid int) (statFields, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return statFields{}, false
	}
	// The command name is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return statFields{}, false
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): ppid is field 4, utime..cstime fields 14-17.
	if len(f) < 15 {
		return statFields{}, false
	}
	n := func(k int) int64 { v, _ := strconv.ParseInt(f[k-3], 10, 64); return v }
	return statFields{ppid: n(4), utime: n(14), stime: n(15), cutime: n(16), cstime: n(17)}, true
}

// postmasterPID reads the server's PID from its data directory.
func postmasterPID(dataDir string) int {
	b, err := os.ReadFile(dataDir + "/postmaster.pid")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}

// heapInUse is the Go heap in use after a collection.
func heapInUse() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse)
}

// procCPU is a process's user+sys CPU from /proc (0 when gone).
func procCPU(pid int) time.Duration {
	st, ok := procStat(pid)
	if !ok {
		return 0
	}
	return time.Duration(st.utime+st.stime) * time.Second / clockTicks
}

// procHWM and procRSS are a process's peak and current resident set.
func procHWM(pid int) int64 { return procStatus(pid, "VmHWM:") }
func procRSS(pid int) int64 { return procStatus(pid, "VmRSS:") }

func procStatus(pid int, field string) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	v, _ := statusField(b, field)
	return v
}
