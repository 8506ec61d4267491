package bench

import (
	"math"
	"runtime"
	"strings"
	"testing"
)

// The legacy heap profile: records are samples scaled back as pprof does,
// grouped by the allocating function, largest first; the runtime's figures
// are read from its MemStats lines.
func TestParseHeapProfile(t *testing.T) {
	const text = `heap profile: 3: 1572864 [9: 4718592] @ heap/1048576
1: 1048576 [2: 2097152] @ 0x1 0x2
#	0x1	bufio.NewReaderSize+0x1	/go/src/bufio/bufio.go:57
#	0x2	github.com/jackc/pgx/v5.connect+0x2	/x.go:1

1: 262144 [1: 262144] @ 0x3
#	0x3	encoding/json.typeFields+0x3	/go/src/encoding/json/encode.go:1

1: 262144 [6: 2359296] @ 0x4
#	0x4	bufio.NewReaderSize+0x9	/go/src/bufio/bufio.go:57

0: 0 [4: 4096] @ 0x5
#	0x5	fmt.Sprintf+0x5	/go/src/fmt/print.go:1

# runtime.MemStats
# Alloc = 123
# Sys = 31600000
# HeapSys = 22800000
# HeapInuse = 13900000
# StackInuse = 40000
# NextGC = 15200000
`
	h, err := parseHeapProfile(strings.NewReader(text), 10)
	if err != nil {
		t.Fatal(err)
	}
	rate := 524288.0
	scale := func(size float64) float64 { return 1 / (1 - math.Exp(-size/rate)) }
	wantBufio := 1048576*scale(1048576) + 262144*scale(262144)
	wantObjs := int64(scale(1048576)) + int64(scale(262144)) // one sampled object each, scaled
	if len(h.Top) != 2 || h.Top[0].Func != "bufio.NewReaderSize" || math.Abs(float64(h.Top[0].Bytes)-wantBufio) > 2 ||
		h.Top[1].Func != "encoding/json.typeFields" || h.Top[0].Objects != wantObjs {
		t.Fatalf("top %+v, want bufio.NewReaderSize (%.0f bytes, %d objects) then encoding/json.typeFields", h.Top, wantBufio, wantObjs)
	}
	if h.Sys != 31600000 || h.HeapSys != 22800000 || h.HeapInuse != 13900000 || h.StackInuse != 40000 || h.NextGC != 15200000 {
		t.Fatalf("memstats %+v", h)
	}
	if _, err := parseHeapProfile(strings.NewReader("goroutine profile: total 3\n"), 10); err == nil {
		t.Fatal("a goroutine profile parsed as a heap profile")
	}
	// Something live and large enough to be sampled for certain (the heap
	// profile samples about one allocation per 512 KiB, and shows what was
	// live at the last collection): a quiet test process may hold nothing
	// sampled at all.
	live := make([]byte, 8<<20)
	runtime.GC()
	self, err := selfHeapProfile()
	runtime.KeepAlive(live)
	if err != nil || self.Sys <= 0 || self.RSS <= 0 || len(self.Top) == 0 {
		t.Fatalf("this process's heap: %+v, %v", self, err)
	}
}
