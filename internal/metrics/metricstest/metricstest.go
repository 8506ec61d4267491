// Package metricstest tells tests which series `migrator serve` exports,
// so that the alert rules and the dashboard are checked against the real
// registry (internal/metrics) rather than a list kept by hand.
package metricstest

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/hermes-cloud/migrator/internal/callrec"
	"github.com/hermes-cloud/migrator/internal/metrics"
	"github.com/hermes-cloud/migrator/store"
)

// everything is a source with a value for every database-backed series,
// so that the registry gathers each family serve can export.
type everything struct{}

func (everything) RunsByState(context.Context) (map[string]int, error) {
	return map[string]int{string(store.RunPaused): 1}, nil
}
func (everything) SlotsInUse(context.Context) (int, error)     { return 1, nil }
func (everything) CanariesBaking(context.Context) (int, error) { return 1, nil }
func (everything) OnCallStatus(context.Context) (store.OnCallStatus, error) {
	now := time.Now()
	return store.OnCallStatus{OldestPausedAt: now, LastAutoUpdateOK: now, LastAutoUpdateRun: now, FirstAutoUpdateTick: now, AgentsLeftDraining: 1,
		LeaseReleaseFailures: 1, OldestPendingNotification: now,
		Notifications: []store.NotificationCount{{Kind: "slack", State: store.NotifyPending, N: 1}}}, nil
}

// Exported returns every series name serve's registry exports (with
// auto-update on): the families, and a histogram's _bucket, _sum and
// _count, a summary's _sum and _count.
func Exported() (map[string]bool, error) {
	m, err := metrics.New(metrics.Config{Source: everything{}, OnCall: everything{}, AutoUpdate: true})
	if err != nil {
		return nil, err
	}
	// Counters whose series appear only once counted.
	m.ObserveFly(callrec.Call{Kind: "fly.get", Status: 200})
	m.ObserveGateway(callrec.Call{Kind: "gateway.status", Status: 200})
	fams, err := m.Registry().Gather()
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, f := range fams {
		name := f.GetName()
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM:
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				out[name+s] = true
			}
		case dto.MetricType_SUMMARY:
			out[name+"_sum"], out[name+"_count"] = true, true
			out[name] = true
		default:
			out[name] = true
		}
	}
	return out, nil
}

var (
	quoted   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	matchers = regexp.MustCompile(`\{[^{}]*\}`)
	ranges   = regexp.MustCompile(`\[[^\[\]]*\]`)
	grouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	ident    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	keywords = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "by": true,
		"without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true, "inf": true, "nan": true}
)

// MetricNames returns the metric names a PromQL expression reads: every
// identifier that is not a function (followed by "("), a keyword, a label
// name or value, or a Grafana variable ($__rate_interval).
func MetricNames(expr string) []string {
	e := quoted.ReplaceAllString(expr, " ")
	e = matchers.ReplaceAllString(e, " ")
	e = ranges.ReplaceAllString(e, " ")
	e = grouping.ReplaceAllString(e, " ")
	seen := map[string]bool{}
	for _, loc := range ident.FindAllStringIndex(e, -1) {
		name := e[loc[0]:loc[1]]
		rest := strings.TrimLeft(e[loc[1]:], " \t\n")
		if strings.HasPrefix(rest, "(") || keywords[strings.ToLower(name)] {
			continue
		}
		if loc[0] > 0 && (e[loc[0]-1] == '$' || e[loc[0]-1] == '.' || (e[loc[0]-1] >= '0' && e[loc[0]-1] <= '9')) {
			continue // a variable, or a number's exponent/unit
		}
		seen[name] = true
	}
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Unknown returns the metric names expr reads that serve does not export.
func Unknown(exported map[string]bool, expr string) []string {
	var out []string
	for _, n := range MetricNames(expr) {
		if !exported[n] {
			out = append(out, n)
		}
	}
	return out
}

// Check is Unknown as an error.
func Check(exported map[string]bool, where, expr string) error {
	if u := Unknown(exported, expr); len(u) > 0 {
		return fmt.Errorf("%s reads %v, which serve does not export: %s", where, u, expr)
	}
	return nil
}
