package policy

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Window is a recurring maintenance window in a time zone, such as
// "Mon-Fri 02:00-05:00 America/New_York". The zero Window has no
// restriction: it contains every instant.
//
// An occurrence belongs to the day it starts on: "Sat,Sun 22:00-04:00 UTC"
// is open from Saturday 22:00 to Sunday 04:00 and from Sunday 22:00 to
// Monday 04:00. Times are local wall-clock times of the zone; see
// [Window.Contains] for what happens on the days the clocks change. Windows
// that parse from equal text compare equal with ==.
type Window struct {
	days  uint8 // bit i set: an occurrence may start on time.Weekday(i)
	start int   // minutes after local midnight, 0..1439
	end   int   // minutes after local midnight, 1..1440; end <= start wraps past midnight
	loc   *time.Location
}

var dayNames = [7]string{"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"}

const allDays = 1<<7 - 1

// ParseWindow parses "DAYS HH:MM-HH:MM ZONE".
//
// DAYS is "daily" or a comma-separated list of days (Mon … Sun) and ranges
// ("Mon-Fri"; "Fri-Mon" wraps over the weekend); it may be left out, meaning
// daily. The end may be "24:00"; an end at or before the start wraps past
// midnight. ZONE is an IANA name ("UTC", "Europe/Berlin"); "Local" is refused
// because it would make the policy mean different things on different hosts.
// "always" is the zero Window.
func ParseWindow(s string) (Window, error) {
	w, err := parseWindow(s)
	if err != nil {
		return Window{}, fmt.Errorf("window %q: %w", s, err)
	}
	return w, nil
}

func parseWindow(s string) (Window, error) {
	f := strings.Fields(s)
	if len(f) == 1 && strings.EqualFold(f[0], "always") {
		return Window{}, nil
	}
	var w Window
	const format = `want "DAYS HH:MM-HH:MM ZONE", e.g. "Mon-Fri 02:00-05:00 America/New_York"`
	switch len(f) {
	case 2:
		if !strings.Contains(f[0], ":") {
			return Window{}, errors.New(format) // "Mon-Fri UTC" is missing times, not a bad time
		}
		w.days = allDays
	case 3:
		d, err := parseDays(f[0])
		if err != nil {
			return Window{}, err
		}
		w.days = d
		f = f[1:]
	default:
		return Window{}, errors.New(format)
	}
	startS, endS, ok := strings.Cut(f[0], "-")
	if !ok {
		return Window{}, fmt.Errorf("times %q: want HH:MM-HH:MM", f[0])
	}
	var err error
	if w.start, err = parseClock(startS, false); err != nil {
		return Window{}, err
	}
	if w.end, err = parseClock(endS, true); err != nil {
		return Window{}, err
	}
	if w.start == w.end {
		return Window{}, errors.New("start equals end: the window would be empty (use 00:00-24:00 for a whole day)")
	}
	if w.loc, err = loadZone(f[1]); err != nil {
		return Window{}, err
	}
	return w, nil
}

func parseDays(s string) (uint8, error) {
	if strings.EqualFold(s, "daily") {
		return allDays, nil
	}
	var set uint8
	for item := range strings.SplitSeq(s, ",") {
		a, b, isRange := strings.Cut(item, "-")
		from, err := parseDay(a)
		if err != nil {
			return 0, err
		}
		to := from
		if isRange {
			if to, err = parseDay(b); err != nil {
				return 0, err
			}
		}
		for d := from; ; d = (d + 1) % 7 {
			bit := uint8(1) << d
			if set&bit != 0 {
				return 0, fmt.Errorf("day %s listed twice", dayNames[d])
			}
			set |= bit
			if d == to {
				break
			}
		}
	}
	return set, nil
}

func parseDay(s string) (int, error) {
	for i, n := range dayNames {
		if strings.EqualFold(s, n) {
			return i, nil
		}
	}
	return 0, fmt.Errorf("day %q: want daily, Mon, Tue, Wed, Thu, Fri, Sat or Sun", s)
}

// parseClock parses HH:MM into minutes after midnight; 24:00 only as an end.
func parseClock(s string, isEnd bool) (int, error) {
	h, m, ok := strings.Cut(s, ":")
	if !ok || len(h) != 2 || len(m) != 2 {
		return 0, fmt.Errorf("time %q: want HH:MM", s)
	}
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if err1 != nil || err2 != nil || hh < 0 || mm < 0 || mm > 59 || hh > 24 || (hh == 24 && (mm != 0 || !isEnd)) {
		return 0, fmt.Errorf("time %q: want 00:00 to 23:59 (24:00 only as an end)", s)
	}
	return hh*60 + mm, nil
}

func loadZone(name string) (*time.Location, error) {
	if name == "Local" {
		return nil, errors.New(`time zone "Local" depends on the host; name the zone, e.g. UTC or Europe/Berlin`)
	}
	zones.Lock()
	defer zones.Unlock()
	if loc, ok := zones.m[name]; ok {
		return loc, nil
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, fmt.Errorf("unknown time zone %q: want an IANA name such as UTC or America/New_York", name)
	}
	zones.m[name] = loc
	return loc, nil
}

// zones caches loaded locations so that equal windows compare equal with ==
// and a zone's file is read once. Only valid names enter, so it stays small.
var zones = struct {
	sync.Mutex
	m map[string]*time.Location
}{m: map[string]*time.Location{}}

// IsZero reports whether w is the unrestricted window.
func (w Window) IsZero() bool { return w.loc == nil }

// String returns the canonical text of w, which ParseWindow accepts:
// "always" for the zero Window.
func (w Window) String() string {
	if w.IsZero() {
		return "always"
	}
	return fmt.Sprintf("%s %s-%s %s", formatDays(w.days), formatClock(w.start), formatClock(w.end), w.loc.String())
}

func formatClock(m int) string { return fmt.Sprintf("%02d:%02d", m/60, m%60) }

// formatDays writes runs of three or more days as ranges, Monday first, so
// equal sets always print the same way.
func formatDays(set uint8) string {
	if set == allDays {
		return "daily"
	}
	order := [7]int{1, 2, 3, 4, 5, 6, 0}
	var parts []string
	for i := 0; i < 7; {
		if set&(1<<order[i]) == 0 {
			i++
			continue
		}
		j := i
		for j+1 < 7 && set&(1<<order[j+1]) != 0 {
			j++
		}
		switch {
		case j-i >= 2:
			parts = append(parts, dayNames[order[i]]+"-"+dayNames[order[j]])
		default:
			for k := i; k <= j; k++ {
				parts = append(parts, dayNames[order[k]])
			}
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}

// Contains reports whether w is open at t: whether the zone's clock at t
// shows a time inside the window, on a day the window may start.
//
// So on the days the clocks change, the window follows the clock on the
// wall: it is never open at a local time outside the one written. A
// spring-forward jump over the start opens "02:00-05:00" at 03:00, an hour
// short, and a window lying wholly in the skipped hour does not occur that
// day. An hour repeated by a fall-back counts twice: "01:00-01:30" is open on
// both passes, and "01:30-03:00" closes from the jump back to 01:00 until
// the clock shows 01:30 again.
func (w Window) Contains(t time.Time) bool {
	if w.IsZero() {
		return true
	}
	lt := t.In(w.loc)
	sec := lt.Hour()*3600 + lt.Minute()*60 + lt.Second()
	s, e := w.start*60, w.end*60
	switch {
	case s < e:
		return sec >= s && sec < e && w.startsOn(lt.Weekday())
	case sec >= s:
		return w.startsOn(lt.Weekday())
	case sec < e: // after midnight: the occurrence started yesterday
		return w.startsOn((lt.Weekday() + 6) % 7)
	}
	return false
}

func (w Window) startsOn(d time.Weekday) bool { return w.days&(1<<d) != 0 }

// Next returns the earliest instant at or after t at which w is open: t
// itself when w contains t. It returns the zero Time only if w does not open
// within 16 days, which a parsed Window cannot do.
func (w Window) Next(t time.Time) time.Time {
	if w.Contains(t) {
		return t
	}
	// Openness changes only when the clock reaches the start or end time or
	// jumps at a zone transition, so the first opening is one of those.
	var best time.Time
	try := func(c time.Time) {
		if c.After(t) && (best.IsZero() || c.Before(best)) && w.Contains(c) {
			best = c
		}
	}
	y, mo, d := t.In(w.loc).Date()
	for i := -1; i <= 16 && best.IsZero(); i++ {
		for _, c := range wallInstants(w.loc, y, mo, d+i, w.start) {
			try(c)
		}
	}
	limit := best
	if limit.IsZero() {
		limit = t.Add(16 * 24 * time.Hour)
	}
	for _, c := range transitions(w.loc, t, limit) {
		try(c)
	}
	return best
}

// End returns when w, open at t, next closes: the zero Time if w is not open
// at t or stays open for the next 8 days (a daily 00:00-24:00 window).
func (w Window) End(t time.Time) time.Time {
	if w.IsZero() || !w.Contains(t) {
		return time.Time{}
	}
	var best time.Time
	try := func(c time.Time) {
		if c.After(t) && (best.IsZero() || c.Before(best)) && !w.Contains(c) {
			best = c
		}
	}
	y, mo, d := t.In(w.loc).Date()
	for i := 0; i <= 8 && best.IsZero(); i++ {
		for _, c := range wallInstants(w.loc, y, mo, d+i, w.end) {
			try(c)
		}
	}
	limit := best
	if limit.IsZero() {
		limit = t.Add(9 * 24 * time.Hour)
	}
	for _, c := range transitions(w.loc, t, limit) {
		try(c)
	}
	return best
}

// wallInstants returns, earliest first, the instants at which the clock of
// loc shows the local date y-mo-d plus minute minutes (normalised like
// time.Date): none in a spring-forward gap, two in a fall-back repeat.
// time.Date picks one arbitrarily in both cases, hence the explicit walk over
// the zone's periods.
func wallInstants(loc *time.Location, y int, mo time.Month, d, minute int) []time.Time {
	naive := time.Date(y, mo, d, 0, minute, 0, 0, time.UTC)
	var out []time.Time
	// UTC offsets lie within ±26h (Samoa skipped a whole day), so every
	// instant showing this wall time lies in this range.
	u, limit := naive.Add(-27*time.Hour), naive.Add(27*time.Hour)
	for u.Before(limit) {
		lt := u.In(loc)
		_, off := lt.Zone()
		pStart, pEnd := lt.ZoneBounds()
		c := naive.Add(-time.Duration(off) * time.Second)
		if (pStart.IsZero() || !c.Before(pStart)) && (pEnd.IsZero() || c.Before(pEnd)) {
			out = append(out, c)
		}
		if pEnd.IsZero() || !pEnd.After(u) {
			break
		}
		u = pEnd
	}
	return out
}

// transitions returns the instants in (from, to] at which loc's offset
// changes.
func transitions(loc *time.Location, from, to time.Time) []time.Time {
	var out []time.Time
	for u := from; ; {
		_, end := u.In(loc).ZoneBounds()
		if end.IsZero() || !end.After(u) || end.After(to) {
			return out
		}
		out = append(out, end)
		u = end
	}
}
