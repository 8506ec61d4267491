package hermes

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hermes-cloud/migrator/internal/gateway"
)

// Feature is one behaviour of Hermes that migrator relies on, named as in
// the table's configuration (MIGRATOR_HERMES_FEATURES).
type Feature string

// The features, in the order Hermes gained them.
const (
	// DrainRoute: POST /api/gateway/drain with the drain secret's bearer
	// (#52937). Older: no drain route (404 on a loopback bind; on a gated
	// bind the login gate's 401 before routing, like a missing secret).
	DrainRoute Feature = "drain_route"
	// QuietFlag: the drain marker's suppress_notification is honoured at
	// shutdown (#54824). Older: the flag is ignored and the home-channel
	// "shutting down" broadcast goes out on every drained stop.
	QuietFlag Feature = "quiet_flag"
	// BootSelfHeal: a gateway whose saved state is draining or degraded
	// (a recreate's SIGTERM beat the final state write) starts at boot
	// (#55397, hermes_cli/container_boot.py _TRANSIENT_RUNNING_STATES).
	// Older: container boot registers it with a down marker: the dashboard
	// answers, the gateway never starts, messaging is dark.
	BootSelfHeal Feature = "boot_self_heal"
	// CountsCron: cron jobs and API runs are counted in active_agents, and
	// the in-process scheduler starts no job while draining (#63891).
	// Older: active_agents counts chat turns only, and cron jobs keep
	// starting during a drain.
	CountsCron Feature = "counts_cron"
	// SelfSuspend: the gateway suspends its own machine through the local
	// flaps socket when idle (#84295, #84327), instead of Fly Proxy's
	// autostop judging idle on inbound connections alone.
	SelfSuspend Feature = "self_suspend"
	// MarkerExpiry: a drain marker older than an hour is ignored (#85444).
	// Older: an orphaned marker refuses turns until it is cancelled.
	MarkerExpiry Feature = "marker_expiry"
	// Idle2m: the scale-to-zero idle timeout is 2 minutes, and its idle
	// predicate counts cron and API work and fails awake (#91155, #90761).
	// Older: 5 minutes.
	Idle2m Feature = "idle_2m"
)

// Info is what the table says about a feature: its source, and what an
// image without it does and what migrator does about that.
type Info struct {
	Feature Feature
	// PRs are hermes-agent's pull requests that brought it, and Merged the
	// day the last of them merged.
	PRs    []int
	Merged string
	// Since is the first release that carries it (the default minimum).
	Since string
	// Older is what an image without it does.
	Older string
	// Migrator is what migrator does with an agent that lacks it.
	Migrator string
}

var infos = []Info{
	{DrainRoute, []int{52937}, "2026-06-26", "0.18.0",
		"has no drain route: 404, or on a gated bind the login gate's 401 before routing",
		"a drain refused 404/401 follows the policy's undrainable (fail, or recreate loud); the version tells a login gate's 401 apart as an older Hermes or a missing secret"},
	{QuietFlag, []int{54824}, "2026-06-29", "0.18.0",
		"ignores suppress_notification: a quiet drain still sends the home-channel broadcast",
		"a quiet decision is recorded and sent loud (quiet=false, with the reason): the shutdown broadcasts anyway"},
	{BootSelfHeal, []int{55397}, "2026-06-30", "0.18.0",
		"boots with its gateway down when the saved state is draining or degraded: the agent comes back dark",
		"a rollback onto it is not attempted: the machine fails for a person, with the reason"},
	{CountsCron, []int{63891}, "2026-07-13", "0.19.0",
		"counts chat turns only in active_agents, and keeps starting cron jobs while draining",
		"/api/status shows no cron work: the drain is flagged in the audit (a running cron job is cut off unseen)"},
	{SelfSuspend, []int{84295, 84327}, "2026-08-12", "0.20.1",
		"is put to sleep by Fly Proxy's autostop on inbound traffic alone, even mid-task",
		"nothing different: a machine that went down is moved without a drain"},
	{MarkerExpiry, []int{85444}, "2026-08-13", "0.20.2",
		"never expires a drain marker: an orphaned one refuses turns until cancelled",
		"nothing different: every way out before the update cancels the drain, and long drains refresh the marker"},
	{Idle2m, []int{91155, 90761}, "2026-08-20", "0.20.6",
		"suspends itself after 5 idle minutes, and its idle check misses cron and API work",
		"nothing different"},
}

// Features lists every feature's Info, in the order Hermes gained them.
func Features() []Info { return slices.Clone(infos) }

// InfoOf is feature f's Info (ok false for an unknown feature).
func InfoOf(f Feature) (Info, bool) {
	for _, i := range infos {
		if i.Feature == f {
			return i, true
		}
	}
	return Info{}, false
}

// ParseFeature reads a feature's name.
func ParseFeature(s string) (Feature, error) {
	f := Feature(strings.TrimSpace(s))
	if _, ok := InfoOf(f); !ok {
		names := make([]string, len(infos))
		for i, in := range infos {
			names[i] = string(in.Feature)
		}
		return "", fmt.Errorf("unknown Hermes feature %q: want one of %s", s, strings.Join(names, ", "))
	}
	return f, nil
}

// ActiveSessionWindow is how recent a session's last activity must be for
// /api/status to count it in active_sessions (hermes-agent's status route,
// _count_status_active_sessions: now - last_active < 300).
const ActiveSessionWindow = 300 * time.Second

// Table is the minimum Hermes version of each feature. The zero Table is
// Default().
type Table struct {
	min map[Feature]string
}

// Default is the table of the first releases that carry each feature (see
// the package doc for the sources).
func Default() Table {
	t := Table{min: map[Feature]string{}}
	for _, i := range infos {
		t.min[i.Feature] = i.Since
	}
	return t
}

func (t Table) table() Table {
	if t.min == nil {
		return Default()
	}
	return t
}

// Min is the oldest version with feature f ("" for an unknown feature).
func (t Table) Min(f Feature) string { return t.table().min[f] }

// With returns t with feature f's minimum set to version.
func (t Table) With(f Feature, version string) (Table, error) {
	if _, ok := InfoOf(f); !ok {
		return Table{}, fmt.Errorf("unknown Hermes feature %q", f)
	}
	v := strings.TrimSpace(version)
	if _, ok := gateway.CompareVersions(v, v); !ok {
		return Table{}, fmt.Errorf("Hermes feature %s: %q is not a version such as 0.18.0", f, version)
	}
	out := Table{min: map[Feature]string{}}
	for k, m := range t.table().min {
		out.min[k] = m
	}
	out.min[f] = v
	return out, nil
}

// Parse reads overrides of the default table: "feature=version" pairs
// separated by commas ("quiet_flag=0.18.0, counts_cron=0.19.2"). An empty
// string is the default table.
func Parse(s string) (Table, error) {
	t := Default()
	if strings.TrimSpace(s) == "" {
		return t, nil
	}
	var errs []error
	seen := map[Feature]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, version, ok := strings.Cut(part, "=")
		if !ok {
			errs = append(errs, fmt.Errorf("%q: want feature=version", part))
			continue
		}
		f, err := ParseFeature(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if seen[f] {
			errs = append(errs, fmt.Errorf("Hermes feature %s given twice", f))
			continue
		}
		seen[f] = true
		if t, err = t.With(f, version); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return Table{}, err
	}
	return t, nil
}

// String is the table as Parse reads it, in feature order.
func (t Table) String() string {
	parts := make([]string, 0, len(infos))
	for _, i := range infos {
		parts = append(parts, string(i.Feature)+"="+t.Min(i.Feature))
	}
	return strings.Join(parts, ",")
}

// Support says whether a version carries a feature.
type Support int

// The answers.
const (
	// Unknown: the version is absent or cannot be compared.
	Unknown Support = iota
	// Has: the version is at or above the feature's minimum.
	Has
	// Lacks: the version is below it.
	Lacks
)

// Has says whether Hermes version (as /api/status reports it) carries f.
func (t Table) Has(version string, f Feature) Support {
	m := t.Min(f)
	if m == "" || strings.TrimSpace(version) == "" {
		return Unknown
	}
	cmp, ok := gateway.CompareVersions(version, m)
	switch {
	case !ok:
		return Unknown
	case cmp < 0:
		return Lacks
	}
	return Has
}

// Lack is a feature an agent's version lacks.
type Lack struct {
	Info
	// Min is the table's minimum for it (the default, or an override).
	Min string
}

// String is "quiet_flag (since 0.18.0, #54824)".
func (l Lack) String() string {
	prs := make([]string, len(l.PRs))
	for i, p := range l.PRs {
		prs[i] = fmt.Sprintf("#%d", p)
	}
	return fmt.Sprintf("%s (since %s, hermes-agent %s)", l.Feature, l.Min, strings.Join(prs, ", "))
}

// Lacks lists the features version lacks, in feature order; none for a
// version that cannot be compared.
func (t Table) Lacks(version string) []Lack {
	var out []Lack
	for _, i := range infos {
		if t.Has(version, i.Feature) == Lacks {
			out = append(out, Lack{Info: i, Min: t.Min(i.Feature)})
		}
	}
	return out
}

// LackNames is Lacks' feature names.
func (t Table) LackNames(version string) []string {
	var out []string
	for _, l := range t.Lacks(version) {
		out = append(out, string(l.Feature))
	}
	return out
}
