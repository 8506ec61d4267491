package policy_test

import (
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // the tests must not depend on the host's zoneinfo

	"github.com/hermes-cloud/migrator/policy"
)

func mustWindow(t *testing.T, s string) policy.Window {
	t.Helper()
	w, err := policy.ParseWindow(s)
	if err != nil {
		t.Fatalf("ParseWindow(%q): %v", s, err)
	}
	return w
}

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestParseWindowCanonical(t *testing.T) {
	cases := []struct{ in, want string }{
		{"Mon-Fri 02:00-05:00 America/New_York", "Mon-Fri 02:00-05:00 America/New_York"},
		{"sat,SUN 22:00-04:00 UTC", "Sat,Sun 22:00-04:00 UTC"},
		{"Sun,Sat 22:00-04:00 UTC", "Sat,Sun 22:00-04:00 UTC"},
		{"daily 01:00-03:00 Europe/Berlin", "daily 01:00-03:00 Europe/Berlin"},
		{"01:00-03:00 Europe/Berlin", "daily 01:00-03:00 Europe/Berlin"},
		{"Mon-Wed,Thu,Fri 02:00-05:00 UTC", "Mon-Fri 02:00-05:00 UTC"},
		{"Fri-Mon 02:00-05:00 UTC", "Mon,Fri-Sun 02:00-05:00 UTC"},
		{"Sun-Sat 02:00-05:00 UTC", "daily 02:00-05:00 UTC"},
		{"Mon,Wed 22:00-24:00 UTC", "Mon,Wed 22:00-24:00 UTC"},
		{"  Tue   00:00-24:00   UTC ", "Tue 00:00-24:00 UTC"},
		{"always", "always"},
	}
	for _, c := range cases {
		w := mustWindow(t, c.in)
		if got := w.String(); got != c.want {
			t.Errorf("ParseWindow(%q).String() = %q, want %q", c.in, got, c.want)
		}
		if again := mustWindow(t, w.String()); again != w {
			t.Errorf("%q does not round-trip: %#v vs %#v", c.in, again, w)
		}
	}
}

func TestParseWindowErrors(t *testing.T) {
	cases := []struct{ in, want string }{
		{"", "want \"DAYS HH:MM-HH:MM ZONE\""},
		{"Mon-Fri", "want \"DAYS"},
		{"Mon-Fri 02:00-05:00 America/New_York extra", "want \"DAYS"},
		{"Mon-Fri 02:00 UTC", "want HH:MM-HH:MM"},
		{"Mon-Fri 2:00-05:00 UTC", `time "2:00"`},
		{"Mon 25:00-26:00 UTC", `time "25:00"`},
		{"Mon 02:60-03:00 UTC", `time "02:60"`},
		{"Mon 24:00-02:00 UTC", "24:00 only as an end"},
		{"Mon 02:00-02:00 UTC", "start equals end"},
		{"Funday 02:00-05:00 UTC", `day "Funday"`},
		{"Mon,Mon 02:00-03:00 UTC", "listed twice"},
		{"Mon-Fri,Wed 02:00-03:00 UTC", "listed twice"},
		{"Mon-Fri 02:00-05:00 Mars/Olympus", `unknown time zone "Mars/Olympus"`},
		{"Mon-Fri 02:00-05:00 Local", `"Local" depends on the host`},
		{"Mon-Fri 02:00-05:00 ../../etc/passwd", "unknown time zone"},
	}
	for _, c := range cases {
		_, err := policy.ParseWindow(c.in)
		if err == nil {
			t.Errorf("ParseWindow(%q): no error", c.in)
			continue
		}
		if !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("ParseWindow(%q) = %q, want one line containing %q", c.in, err, c.want)
		}
	}
}

// windowCase checks Contains at given instants and Next from others.
type windowCase struct {
	name   string
	window string
	in     []string          // instants (RFC 3339) inside the window
	out    []string          // instants outside
	next   map[string]string // Next(key) == value
}

func (c windowCase) run(t *testing.T) {
	w := mustWindow(t, c.window)
	for _, s := range c.in {
		if !w.Contains(utc(s)) {
			t.Errorf("%s: %q should contain %s", c.name, c.window, s)
		}
		if got := w.Next(utc(s)); !got.Equal(utc(s)) {
			t.Errorf("%s: Next(%s) inside the window = %s, want the instant itself", c.name, s, got)
		}
	}
	for _, s := range c.out {
		if w.Contains(utc(s)) {
			t.Errorf("%s: %q should not contain %s", c.name, c.window, s)
		}
	}
	for from, want := range c.next {
		if got := w.Next(utc(from)); !got.Equal(utc(want)) {
			t.Errorf("%s: Next(%s) = %s, want %s", c.name, from, got.UTC().Format(time.RFC3339), want)
		}
	}
}

func TestWindowOvernightWrap(t *testing.T) {
	// 2026-03-06 is a Friday, 03-07 Saturday, 03-08 Sunday, 03-09 Monday.
	windowCase{
		name:   "weekend nights",
		window: "Sat,Sun 22:00-04:00 UTC",
		in: []string{
			"2026-03-07T22:00:00Z", // Saturday's opening
			"2026-03-07T23:59:59Z",
			"2026-03-08T00:00:00Z", // past midnight, still Saturday's occurrence
			"2026-03-08T03:59:59Z",
			"2026-03-08T22:30:00Z", // Sunday's
			"2026-03-09T03:00:00Z", // Monday morning belongs to Sunday's occurrence
		},
		out: []string{
			"2026-03-06T23:00:00Z", // Friday night: Friday is not listed
			"2026-03-07T03:00:00Z", // Saturday morning would belong to Friday
			"2026-03-08T04:00:00Z", // end is exclusive
			"2026-03-08T21:59:59Z",
			"2026-03-09T04:00:00Z",
			"2026-03-09T22:30:00Z", // Monday night
		},
		next: map[string]string{
			"2026-03-06T23:00:00Z": "2026-03-07T22:00:00Z",
			"2026-03-08T04:00:00Z": "2026-03-08T22:00:00Z",
			"2026-03-09T04:00:00Z": "2026-03-14T22:00:00Z",
		},
	}.run(t)

	windowCase{
		name:   "weekday mornings in New York",
		window: "Mon-Fri 02:00-05:00 America/New_York", // EST = UTC-5 until 2026-03-08
		in:     []string{"2026-03-06T07:00:00Z", "2026-03-06T09:59:00Z"},
		out:    []string{"2026-03-06T06:59:00Z", "2026-03-06T10:00:00Z", "2026-03-07T08:00:00Z"},
		next: map[string]string{
			// Friday after the window → Monday 02:00 EDT (DST began Sunday).
			"2026-03-06T11:00:00Z": "2026-03-09T06:00:00Z",
		},
	}.run(t)

	windowCase{
		name:   "end at 24:00",
		window: "Wed 22:00-24:00 UTC", // 2026-03-04 is a Wednesday
		in:     []string{"2026-03-04T22:00:00Z", "2026-03-04T23:59:59Z"},
		out:    []string{"2026-03-05T00:00:00Z", "2026-03-04T21:59:59Z"},
		next:   map[string]string{"2026-03-05T00:00:00Z": "2026-03-11T22:00:00Z"},
	}.run(t)
}

func TestWindowDSTNewYork(t *testing.T) {
	// Spring forward: 2026-03-08 02:00 EST (07:00Z) jumps to 03:00 EDT.
	windowCase{
		name:   "spring forward: window starting in the skipped hour opens at the jump",
		window: "daily 02:00-05:00 America/New_York",
		in:     []string{"2026-03-08T07:00:00Z", "2026-03-08T08:59:59Z"},
		out:    []string{"2026-03-08T06:59:59Z" /* 01:59 EST */, "2026-03-08T09:00:00Z" /* 05:00 EDT */},
		next: map[string]string{
			"2026-03-08T05:00:00Z": "2026-03-08T07:00:00Z",
			"2026-03-08T09:00:00Z": "2026-03-09T06:00:00Z", // 02:00 EDT next day
			"2026-03-07T10:00:00Z": "2026-03-08T07:00:00Z",
		},
	}.run(t)
	windowCase{
		name:   "spring forward: window wholly in the skipped hour does not occur",
		window: "daily 02:00-02:45 America/New_York",
		in:     []string{"2026-03-07T07:30:00Z" /* 02:30 EST the day before */},
		out:    []string{"2026-03-08T07:00:00Z", "2026-03-08T07:30:00Z", "2026-03-08T06:59:00Z"},
		next:   map[string]string{"2026-03-08T06:00:00Z": "2026-03-09T06:00:00Z"},
	}.run(t)
	windowCase{
		name:   "spring forward: window ending in the skipped hour closes at the jump",
		window: "daily 01:30-02:30 America/New_York",
		in:     []string{"2026-03-08T06:30:00Z", "2026-03-08T06:59:59Z"},
		out:    []string{"2026-03-08T07:00:00Z", "2026-03-08T07:30:00Z" /* 03:30 EDT */},
	}.run(t)
	windowCase{
		name:   "spring forward: overnight window spanning the jump",
		window: "daily 22:00-04:00 America/New_York", // Sat 22:00 EST (03:00Z) to Sun 04:00 EDT (08:00Z)
		in:     []string{"2026-03-08T03:00:00Z", "2026-03-08T07:30:00Z", "2026-03-08T07:59:59Z"},
		out:    []string{"2026-03-08T02:59:59Z", "2026-03-08T08:00:00Z"},
	}.run(t)

	// Fall back: 2026-11-01 02:00 EDT (06:00Z) goes back to 01:00 EST; 01:xx
	// happens at 05:xxZ (EDT) and again at 06:xxZ (EST).
	windowCase{
		name:   "fall back: an hour ending at 02:00 covers both passes",
		window: "daily 01:00-02:00 America/New_York",
		in:     []string{"2026-11-01T05:00:00Z", "2026-11-01T05:59:59Z", "2026-11-01T06:30:00Z", "2026-11-01T06:59:59Z"},
		out:    []string{"2026-11-01T04:59:59Z", "2026-11-01T07:00:00Z"},
	}.run(t)
	windowCase{
		name:   "fall back: a window inside the repeated hour is open on both passes",
		window: "daily 01:00-01:30 America/New_York",
		in:     []string{"2026-11-01T05:00:00Z", "2026-11-01T05:29:59Z", "2026-11-01T06:00:00Z" /* 01:00 EST */, "2026-11-01T06:29:59Z"},
		out:    []string{"2026-11-01T05:30:00Z", "2026-11-01T05:59:59Z", "2026-11-01T06:30:00Z"},
		next: map[string]string{
			"2026-11-01T05:45:00Z": "2026-11-01T06:00:00Z", // reopens at the jump back
			"2026-11-01T06:45:00Z": "2026-11-02T06:00:00Z", // 01:00 EST the next day
		},
	}.run(t)
	windowCase{
		name:   "fall back: window starting in the repeated hour closes while the clock is before its start",
		window: "daily 01:30-03:00 America/New_York",
		in:     []string{"2026-11-01T05:30:00Z", "2026-11-01T05:59:59Z", "2026-11-01T06:30:00Z" /* 01:30 EST */, "2026-11-01T07:59:00Z"},
		out:    []string{"2026-11-01T05:29:00Z", "2026-11-01T06:10:00Z" /* 01:10 EST */, "2026-11-01T08:00:00Z"},
		next:   map[string]string{"2026-11-01T06:10:00Z": "2026-11-01T06:30:00Z"},
	}.run(t)
}

func TestWindowDSTBerlin(t *testing.T) {
	// Spring forward: 2026-03-29 02:00 CET (01:00Z) jumps to 03:00 CEST.
	windowCase{
		name:   "Berlin spring forward",
		window: "daily 02:00-04:00 Europe/Berlin",
		in:     []string{"2026-03-29T01:00:00Z", "2026-03-29T01:59:59Z"},
		out:    []string{"2026-03-29T00:59:59Z", "2026-03-29T02:00:00Z"},
		next: map[string]string{
			"2026-03-28T12:00:00Z": "2026-03-29T01:00:00Z",
			"2026-03-29T02:00:00Z": "2026-03-30T00:00:00Z", // 02:00 CEST
		},
	}.run(t)
	// Fall back: 2026-10-25 03:00 CEST (01:00Z) goes back to 02:00 CET;
	// 02:30 shows at 00:30Z and at 01:30Z; 03:30 CET is 02:30Z.
	windowCase{
		name:   "Berlin fall back",
		window: "Sun 02:30-03:30 Europe/Berlin",
		in:     []string{"2026-10-25T00:30:00Z", "2026-10-25T00:59:59Z", "2026-10-25T01:30:00Z", "2026-10-25T02:29:59Z"},
		out:    []string{"2026-10-25T00:29:59Z", "2026-10-25T01:00:00Z" /* 02:00 CET */, "2026-10-25T01:29:59Z", "2026-10-25T02:30:00Z"},
		next: map[string]string{
			"2026-10-24T12:00:00Z": "2026-10-25T00:30:00Z",
			"2026-10-25T01:00:00Z": "2026-10-25T01:30:00Z",
			"2026-10-25T03:00:00Z": "2026-11-01T01:30:00Z",
		},
	}.run(t)
}

func TestWindowEnd(t *testing.T) {
	cases := []struct{ window, at, want string }{
		{"daily 02:00-05:00 America/New_York", "2026-03-08T07:30:00Z", "2026-03-08T09:00:00Z"},
		{"Sat,Sun 22:00-04:00 UTC", "2026-03-07T23:00:00Z", "2026-03-08T04:00:00Z"},
		{"Sun 02:30-03:30 Europe/Berlin", "2026-10-25T00:30:00Z", "2026-10-25T01:00:00Z"},
		{"Sun 02:30-03:30 Europe/Berlin", "2026-10-25T01:30:00Z", "2026-10-25T02:30:00Z"},
		{"daily 01:00-02:00 America/New_York", "2026-11-01T05:10:00Z", "2026-11-01T07:00:00Z"},
		{"daily 00:00-24:00 UTC", "2026-03-07T23:00:00Z", ""},              // never closes
		{"daily 02:00-05:00 America/New_York", "2026-03-08T12:00:00Z", ""}, // not open
	}
	for _, c := range cases {
		got := mustWindow(t, c.window).End(utc(c.at))
		if (c.want == "" && !got.IsZero()) || (c.want != "" && !got.Equal(utc(c.want))) {
			t.Errorf("%q.End(%s) = %v, want %q", c.window, c.at, got, c.want)
		}
	}
}

func TestWindowZeroIsAlways(t *testing.T) {
	var w policy.Window
	now := utc("2026-03-08T07:30:00Z")
	if !w.IsZero() || !w.Contains(now) || !w.Next(now).Equal(now) || w.String() != "always" {
		t.Fatalf("zero window: IsZero %v Contains %v Next %v String %q", w.IsZero(), w.Contains(now), w.Next(now), w.String())
	}
}

// TestWindowWallClockProperty sweeps 2026 in ten-minute steps through zones
// with DST and checks the promises of the package documentation: the window
// is open exactly when the local clock shows a written time on a written
// day, Next lands on an open instant with nothing open before it, and End
// on a closed one with nothing closed before it.
func TestWindowWallClockProperty(t *testing.T) {
	windows := []string{
		"Mon-Fri 02:00-05:00 America/New_York",
		"Sat,Sun 22:00-04:00 America/New_York",
		"daily 01:00-01:30 America/New_York",
		"daily 02:30-03:30 Europe/Berlin",
		"Fri-Mon 23:00-02:00 Europe/Berlin",
		"daily 00:00-24:00 UTC",
	}
	for _, ws := range windows {
		w := mustWindow(t, ws)
		f := strings.Fields(w.String())
		loc, _ := time.LoadLocation(f[2])
		start, end := clockMinutes(f[1][:5]), clockMinutes(f[1][6:])
		days := dayset(t, ws)
		step := 10 * time.Minute
		if testing.Short() {
			step = time.Hour
		}
		for at := utc("2026-01-01T00:00:00Z"); at.Year() == 2026; at = at.Add(step) {
			lt := at.In(loc)
			m := lt.Hour()*60 + lt.Minute()
			startDay := lt.Weekday()
			var inWall bool
			if start < end {
				inWall = m >= start && m < end
			} else {
				inWall = m >= start || m < end
				if m < end {
					startDay = (startDay + 6) % 7
				}
			}
			inWall = inWall && days[startDay]
			got := w.Contains(at)
			if got && !inWall {
				t.Fatalf("%s: open at %s (local %s), outside the written window", ws, at.Format(time.RFC3339), lt.Format("Mon 15:04 MST"))
			}
			if inWall && !got {
				t.Fatalf("%s: closed at %s (local %s), inside the written window", ws, at.Format(time.RFC3339), lt.Format("Mon 15:04 MST"))
			}
			n := w.Next(at)
			if n.Before(at) || !w.Contains(n) {
				t.Fatalf("%s: Next(%s) = %s: before it or not open", ws, at.Format(time.RFC3339), n.Format(time.RFC3339))
			}
			if n.After(at) && w.Contains(n.Add(-time.Second)) {
				t.Fatalf("%s: Next(%s) = %s, but it was open a second earlier", ws, at.Format(time.RFC3339), n.Format(time.RFC3339))
			}
			if e := w.End(n); !e.IsZero() && (!e.After(n) || w.Contains(e) || !w.Contains(e.Add(-time.Second))) {
				t.Fatalf("%s: End(%s) = %s: not the first closed instant", ws, n.Format(time.RFC3339), e.Format(time.RFC3339))
			}
		}
	}
}

func clockMinutes(s string) int {
	t, err := time.Parse("15:04", s)
	if err != nil { // "24:00"
		return 24 * 60
	}
	return t.Hour()*60 + t.Minute()
}

func dayset(t *testing.T, ws string) map[time.Weekday]bool {
	t.Helper()
	all := map[time.Weekday]bool{}
	for d := time.Sunday; d <= time.Saturday; d++ {
		// Probe each weekday through ParseWindow's own single-day parser
		// would be circular; spell the sets out instead.
		all[d] = true
	}
	switch {
	case strings.HasPrefix(ws, "Mon-Fri"):
		all[time.Saturday], all[time.Sunday] = false, false
	case strings.HasPrefix(ws, "Sat,Sun"):
		for d := time.Monday; d <= time.Friday; d++ {
			all[d] = false
		}
	case strings.HasPrefix(ws, "Fri-Mon"):
		all[time.Tuesday], all[time.Wednesday], all[time.Thursday] = false, false, false
	}
	return all
}
