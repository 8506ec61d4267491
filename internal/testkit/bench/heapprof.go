package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
)

// HeapProfile is a process's heap as its Go runtime reports it
// (/debug/pprof/heap, debug=1): the in-use bytes by allocating function
// (flat: the frame that called the allocator), scaled from the sample as
// `go tool pprof` does, and the runtime's memory statistics.
type HeapProfile struct {
	// Done is how many machines were done when it was read; RSS the
	// process's resident set then.
	Done int
	RSS  int64
	// InUse is the profile's in-use bytes in all; Top the largest
	// allocation sites.
	InUse int64
	Top   []HeapEntry
	// From the runtime (# runtime.MemStats): HeapInuse, HeapSys,
	// StackInuse, Sys (all the runtime holds from the OS), and the next
	// GC's heap goal.
	HeapInuse, HeapSys, StackInuse, Sys, NextGC int64
}

// HeapEntry is one allocation site: bytes and objects in use.
type HeapEntry struct {
	Func           string
	Bytes, Objects int64
}

// selfHeapProfile is this process's heap profile now.
func selfHeapProfile() (HeapProfile, error) {
	var b bytes.Buffer
	runtime.GC() // the in-use figures are as of the last collection
	if err := pprof.Lookup("heap").WriteTo(&b, 1); err != nil {
		return HeapProfile{}, err
	}
	h, err := parseHeapProfile(&b, 12)
	if err != nil {
		return h, err
	}
	h.RSS = procRSS(os.Getpid())
	return h, nil
}

// readHeapProfile fetches a heap profile from a pprof address.
func readHeapProfile(ctx context.Context, addr string) (HeapProfile, error) {
	if addr == "" {
		return HeapProfile{}, fmt.Errorf("no profile address (MIGRATOR_PPROF_ADDR)")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/debug/pprof/heap?debug=1", nil)
	if err != nil {
		return HeapProfile{}, err
	}
	res, err := (&http.Client{}).Do(req)
	if err != nil {
		return HeapProfile{}, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return HeapProfile{}, fmt.Errorf("heap profile: HTTP %d", res.StatusCode)
	}
	return parseHeapProfile(res.Body, 12)
}

// parseHeapProfile reads the legacy text heap profile: a header "heap
// profile: … @ heap/2·rate", records "inuse_objects: inuse_bytes [alloc…]
// @ addresses" each followed by "#\taddr\tfunc+off\tfile:line" frames, then
// "# runtime.MemStats" lines. Records are samples: each is scaled by
// 1/(1−e^(−size/rate)) (runtime/pprof's scaleHeapSample).
func parseHeapProfile(r io.Reader, top int) (HeapProfile, error) {
	var h HeapProfile
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	rate := 512 * 1024.0
	byFunc := map[string]*HeapEntry{}
	var cur *struct{ objs, bytes int64 }
	first := true
	for sc.Scan() {
		l := sc.Text()
		switch {
		case first:
			first = false
			if !strings.HasPrefix(l, "heap profile:") {
				return h, fmt.Errorf("not a heap profile: %q", l)
			}
			if _, after, ok := strings.Cut(l, "@ heap/"); ok {
				if v, err := strconv.ParseFloat(strings.TrimSpace(after), 64); err == nil && v > 0 {
					rate = v / 2
				}
			}
		case strings.HasPrefix(l, "# runtime.MemStats"):
			cur = nil
		case strings.HasPrefix(l, "#\t") && cur != nil:
			// The first frame of a record is the allocating function.
			f := strings.Split(l, "\t")
			if len(f) >= 3 {
				name, _, _ := strings.Cut(f[2], "+")
				objs, bytes := scaleHeap(cur.objs, cur.bytes, rate)
				e := byFunc[name]
				if e == nil {
					e = &HeapEntry{Func: name}
					byFunc[name] = e
				}
				e.Bytes += bytes
				e.Objects += objs
				h.InUse += bytes
			}
			cur = nil
		case strings.HasPrefix(l, "# "):
			k, v, ok := strings.Cut(strings.TrimPrefix(l, "# "), " = ")
			if !ok {
				continue
			}
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				continue
			}
			switch k {
			case "HeapInuse":
				h.HeapInuse = n
			case "HeapSys":
				h.HeapSys = n
			case "StackInuse":
				h.StackInuse = n
			case "Sys":
				h.Sys = n
			case "NextGC":
				h.NextGC = n
			}
		default:
			// "N: M [N2: M2] @ 0x…"
			head, _, ok := strings.Cut(l, " [")
			if !ok {
				continue
			}
			a, b, ok := strings.Cut(head, ": ")
			if !ok {
				continue
			}
			objs, err1 := strconv.ParseInt(strings.TrimSpace(a), 10, 64)
			bytes, err2 := strconv.ParseInt(strings.TrimSpace(b), 10, 64)
			if err1 != nil || err2 != nil {
				continue
			}
			cur = &struct{ objs, bytes int64 }{objs, bytes}
		}
	}
	if err := sc.Err(); err != nil {
		return h, err
	}
	for _, e := range byFunc {
		if e.Bytes > 0 {
			h.Top = append(h.Top, *e)
		}
	}
	sort.Slice(h.Top, func(i, j int) bool {
		if h.Top[i].Bytes != h.Top[j].Bytes {
			return h.Top[i].Bytes > h.Top[j].Bytes
		}
		return h.Top[i].Func < h.Top[j].Func
	})
	if len(h.Top) > top {
		h.Top = h.Top[:top]
	}
	return h, nil
}

// scaleHeap undoes the heap profile's sampling for one record (as
// runtime/pprof's scaleHeapSample).
func scaleHeap(objs, bytes int64, rate float64) (int64, int64) {
	if objs == 0 || bytes == 0 {
		return 0, 0
	}
	avg := float64(bytes) / float64(objs)
	scale := 1 / (1 - math.Exp(-avg/rate))
	return int64(float64(objs) * scale), int64(float64(bytes) * scale)
}
