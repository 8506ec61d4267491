package webview

import (
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// historyFilter reads the history search's fields, named like `migrator
// history`'s flags (app, machine, cause, run, since, until, quiet, loud,
// outcome, forced, busy_deferred, undrainable, limit) and checked the same way. defLimit applies when
// limit is absent.
func historyFilter(q url.Values, defLimit int) (store.HistoryFilter, error) {
	get := func(k string) string { return strings.TrimSpace(q.Get(k)) }
	on := func(k string) bool { v := get(k); return v != "" && v != "0" && v != "false" }
	f := store.HistoryFilter{App: get("app"), MachineID: get("machine"), Forced: on("forced"),
		BusyDeferred: on("busy_deferred"), Undrainable: on("undrainable"), Limit: defLimit}
	if s := get("cause"); s != "" {
		c, err := policy.ParseCause(s)
		if err != nil {
			return f, badf("cause: %v", err)
		}
		f.Cause = string(c)
	}
	if s := get("run"); s != "" {
		id, err := strconv.ParseInt(s, 10, 64)
		if err != nil || id <= 0 {
			return f, badf("run %q: want a positive whole number, e.g. 42", s)
		}
		f.RunID = id
	}
	if s := get("outcome"); s != "" {
		if !slices.Contains(store.MachineOutcomes, s) {
			return f, badf("outcome %q: want one of %s", s, strings.Join(store.MachineOutcomes, ", "))
		}
		f.Outcome = s
	}
	switch quiet, loud := on("quiet"), on("loud"); {
	case quiet && loud:
		return f, badf("quiet and loud exclude each other")
	case quiet || loud:
		f.Quiet = &quiet
	}
	var err error
	if f.SinceAgo, f.Since, err = store.ParseWhen(get("since")); err != nil {
		return f, badf("since: %v", err)
	}
	if f.UntilAgo, f.Until, err = store.ParseWhen(get("until")); err != nil {
		return f, badf("until: %v", err)
	}
	if (!f.Since.IsZero() && !f.Until.IsZero() && !f.Until.After(f.Since)) ||
		(f.SinceAgo > 0 && f.UntilAgo > 0 && f.UntilAgo >= f.SinceAgo) {
		return f, badf("until %q is not after since %q", get("until"), get("since"))
	}
	if s := get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return f, badf("limit %q: want 0 (all) or more", s)
		}
		f.Limit = n
	}
	return f, nil
}

// agentQuery is an agent page's filter as the history search's query.
func agentQuery(f store.HistoryFilter) string {
	q := url.Values{}
	q.Set("app", f.App)
	if f.MachineID != "" {
		q.Set("machine", f.MachineID)
	}
	return q.Encode()
}

// runListFilter reads the runs list's fields: state, cause, requested_by,
// before (paging) and limit.
func runListFilter(q url.Values) (store.RunListFilter, error) {
	get := func(k string) string { return strings.TrimSpace(q.Get(k)) }
	f := store.RunListFilter{State: get("state"), RequestedBy: get("requested_by"), Limit: 50}
	if f.State != "" && !slices.Contains(runStates, f.State) {
		return f, badf("state %q: want one of %s", f.State, strings.Join(runStates, ", "))
	}
	if s := get("cause"); s != "" {
		c, err := policy.ParseCause(s)
		if err != nil {
			return f, badf("cause: %v", err)
		}
		f.Cause = string(c)
	}
	if s := get("before"); s != "" {
		id, err := strconv.ParseInt(s, 10, 64)
		if err != nil || id <= 0 {
			return f, badf("before %q: want a run id", s)
		}
		f.BeforeID = id
	}
	if s := get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 500 {
			return f, badf("limit %q: want 1 to 500", s)
		}
		f.Limit = n
	}
	return f, nil
}

func causes() []string {
	var out []string
	for _, c := range policy.Causes() {
		out = append(out, string(c))
	}
	return out
}

// ---- template helpers ----

func stamp(t any) string {
	switch v := t.(type) {
	case time.Time:
		if v.IsZero() {
			return "–"
		}
		return v.UTC().Format("2006-01-02 15:04:05Z")
	case *time.Time:
		if v == nil {
			return "–"
		}
		return stamp(*v)
	}
	return "–"
}

// dur is the time from a to b (b zero: not over; "–").
func dur(a, b time.Time) string {
	if a.IsZero() || b.IsZero() {
		return "–"
	}
	return b.Sub(a).Round(time.Second).String()
}

func pct(n, total int) int {
	if total == 0 {
		return 100
	}
	return n * 100 / total
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func derefInt(p *int) string {
	if p == nil {
		return "–"
	}
	return strconv.Itoa(*p)
}

// secs shows a wait in seconds as a duration ("–": none).
func secs(p *float64) string {
	if p == nil {
		return "–"
	}
	return time.Duration(*p * float64(time.Second)).Round(time.Second).String()
}

func yesno(p *bool) string {
	switch {
	case p == nil:
		return "–"
	case *p:
		return "yes"
	}
	return "no"
}

func sorted[K ~string](m map[K]int) []kv {
	out := make([]kv, 0, len(m))
	for k, n := range m {
		out = append(out, kv{string(k), n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].K < out[j].K })
	return out
}
