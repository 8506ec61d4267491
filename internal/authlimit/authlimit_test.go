package authlimit

import (
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"
)

func TestBurstThenRefill(t *testing.T) {
	l := New(10*time.Second, 3, 100)
	src := netip.MustParsePrefix("10.0.0.1/32")
	now := time.Unix(1000, 0)
	for i := range 3 {
		if d := l.Wait(src, now); d != 0 {
			t.Fatalf("attempt %d: wait %s before the burst is spent", i+1, d)
		}
		limited := l.Fail(src, now)
		if limited != (i == 2) {
			t.Fatalf("attempt %d: limited %v", i+1, limited)
		}
	}
	if d := l.Wait(src, now); d != 10*time.Second {
		t.Fatalf("wait %s after the burst, want 10s", d)
	}
	if d := l.Wait(src, now.Add(10*time.Second)); d != 0 {
		t.Fatalf("wait %s once a token refilled", d)
	}
	if RetryAfter(1500*time.Millisecond) != "2" || RetryAfter(0) != "1" {
		t.Fatal("RetryAfter rounds up to whole seconds, at least 1")
	}
}

func TestBoundedSources(t *testing.T) {
	l := New(time.Hour, 1, 10)
	now := time.Unix(1000, 0)
	for i := range 100 {
		l.Fail(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i / 256), byte(i)}), 32), now.Add(time.Duration(i)*time.Second))
		if n := l.Tracked(); n > 10 {
			t.Fatalf("%d sources tracked, at most 10", n)
		}
	}
}

func TestSourceOfGroupsAnIPv6Machine(t *testing.T) {
	r := httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr = "[fdaa:0:1:a7b:dd:ee:ff:1]:4000"
	a := SourceOf(r)
	r.RemoteAddr = "[fdaa:0:1:a7b:dd:ee:ff:9999]:4001"
	if b := SourceOf(r); a != b {
		t.Fatalf("one /112, two sources: %s %s", a, b)
	}
	r.RemoteAddr = "[::ffff:10.1.2.3]:80"
	if s := SourceOf(r); s != netip.MustParsePrefix("10.1.2.3/32") || PeerAddr(r) != "10.1.2.3" {
		t.Fatalf("mapped IPv4: %s %s", s, PeerAddr(r))
	}
}
