package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Cause is why a run exists.
type Cause string

// The causes, in the order they are listed everywhere.
const (
	AutoUpdate     Cause = "auto-update"
	ImageMigration Cause = "image-migration"
	EnvEdit        Cause = "env-edit"
	ProfileChange  Cause = "profile-change"
	Operator       Cause = "operator"
)

// Causes lists every valid cause.
func Causes() []Cause {
	return []Cause{AutoUpdate, ImageMigration, EnvEdit, ProfileChange, Operator}
}

func causeList() string {
	names := make([]string, 0, 5)
	for _, c := range Causes() {
		names = append(names, string(c))
	}
	return strings.Join(names, ", ")
}

// ParseCause returns the cause named s; an unknown name is an error that
// lists the valid ones.
func ParseCause(s string) (Cause, error) {
	if slices.Contains(Causes(), Cause(s)) {
		return Cause(s), nil
	}
	return "", fmt.Errorf("unknown cause %q (valid: %s)", s, causeList())
}

// OnDeadline is what happens to a drain that is still busy at its deadline.
type OnDeadline string

const (
	// Force recreates the machine anyway; work in flight is interrupted and
	// its users are pinged by the gateway.
	Force OnDeadline = "force"
	// Defer cancels the drain and leaves the machine on its old image for a
	// later run, until MaxDeferrals deferrals have happened; then Force.
	Defer OnDeadline = "defer"
)

// Undrainable is what happens to an agent that cannot be drained yet: its
// drain endpoint answers 404 (a Hermes without the drain route) or 401 (it
// does not hold its drain secret, e.g. until its next recreate after
// `secret sync`).
type Undrainable string

const (
	// UndrainableFail fails the machine's migration: it is never recreated
	// blind. The default.
	UndrainableFail Undrainable = "fail"
	// UndrainableRecreate recreates it without a drain: loud by necessity
	// (no marker, so the gateway broadcasts), recorded as drain outcome
	// "undrainable" with the status code.
	UndrainableRecreate Undrainable = "recreate"
)

// ParseUndrainable reads "fail" or "recreate".
func ParseUndrainable(s string) (Undrainable, error) {
	switch Undrainable(s) {
	case UndrainableFail, UndrainableRecreate:
		return Undrainable(s), nil
	}
	return "", fmt.Errorf("undrainable %q: want \"fail\" or \"recreate\"", s)
}

func parseOnDeadline(s string) (OnDeadline, error) {
	switch OnDeadline(s) {
	case Force, Defer:
		return OnDeadline(s), nil
	}
	return "", fmt.Errorf("on_deadline %q: want \"force\" or \"defer\"", s)
}

// OnBusy is what happens to a machine whose agent was never idle within the
// idle wait.
type OnBusy string

const (
	// BusyDefer puts the machine off without ever draining it: it counts as a
	// deferral, and after MaxDeferrals the decision has no idle wait and
	// drains at once (forced at the deadline).
	BusyDefer OnBusy = "defer"
	// BusyDrain begins the drain anyway and waits Wait for quiescence.
	BusyDrain OnBusy = "drain"
)

func parseOnBusy(s string) (OnBusy, error) {
	switch OnBusy(s) {
	case BusyDefer, BusyDrain:
		return OnBusy(s), nil
	}
	return "", fmt.Errorf("on_busy %q: want \"defer\" or \"drain\"", s)
}

// Machine is what the policy knows about the machine being moved.
type Machine struct {
	App, MachineID, Region, Image string
	Labels                        map[string]string // Fly machine metadata
	Deferrals                     int               // deferrals this machine already had for this cause
}

// Settings are what a cause, or a rule, decides. The zero Window means
// "always"; a zero IdleWait begins the drain at once.
type Settings struct {
	Quiet        bool
	Wait         time.Duration
	OnDeadline   OnDeadline
	MaxDeferrals int
	Window       Window
	// IdleWait is how long to keep looking for a moment when the agent has
	// no work in flight before beginning the drain, counted from the first
	// look; OnBusy says what happens when none came.
	IdleWait time.Duration
	OnBusy   OnBusy
	// IdleQuietFor is how long the agent must have shown nothing in flight
	// for an idle moment to count (0: one look at active_agents == 0 is
	// enough). Hermes's active_agents does not count background work (a
	// subagent still running after its turn ended, a background process),
	// so a moment with none in flight may be the middle of one; Hermes
	// itself suspends only after 2 idle minutes.
	IdleQuietFor time.Duration
	// Undrainable: what to do when the drain endpoint answers 404 or 401.
	// Empty means UndrainableFail.
	Undrainable Undrainable
	// CanaryBake is how long a run's canaries are watched after they
	// verified, before the rest of the run follows (0: the rest follow as
	// soon as every canary migrated).
	CanaryBake time.Duration
}

// Decision is the policy's answer for one machine at one moment.
type Decision struct {
	// Quiet: begin the drain with suppress_notification, skipping the
	// gateway's home-channel broadcast.
	Quiet bool
	// Rule names what decided: a rule's name, or "default:<cause>" when no
	// rule matched; " (max deferrals reached)" is appended when a defer was
	// escalated to force.
	Rule string
	// Wait is how long the drain may wait for quiescence; Deadline is
	// now+Wait.
	Wait     time.Duration
	Deadline time.Time
	// OnDeadline is force or defer, already escalated to force when the
	// machine has had MaxDeferrals deferrals.
	OnDeadline OnDeadline
	// MaxDeferrals is the number of deferrals allowed before forcing; 0 when
	// the policy never defers (forces at the deadline and drains a busy
	// agent after the idle wait).
	MaxDeferrals int
	// IdleWait is how long to wait for the agent to be idle before the drain
	// begins (0: begin at once); OnBusy is what happens when it never was.
	// A machine that has had MaxDeferrals deferrals (with either defer
	// setting) gets IdleWait 0: it is drained at once and forced at the
	// deadline.
	IdleWait time.Duration
	OnBusy   OnBusy
	// IdleQuietFor is how long the agent must have had nothing in flight
	// for a moment to count as idle, before the drain and while it waits
	// for quiescence (0: no quiet needed).
	IdleQuietFor time.Duration
	// InWindow reports whether now is inside the maintenance window. When it
	// is not, NextWindow is when it opens; when it is and there is a window,
	// WindowEnd is when it next closes (zero if not within 8 days). Window is the window's
	// canonical text, "" for no window (always inside).
	InWindow   bool
	NextWindow time.Time
	WindowEnd  time.Time
	Window     string
	// Version identifies the effective policy that decided (Policy.Version).
	Version string
	// Undrainable is fail or recreate (see Undrainable).
	Undrainable Undrainable
	// CanaryBake is how long this machine, when it is one of its run's
	// canaries, is watched after it verified before the run widens.
	CanaryBake time.Duration
}

// Rule overrides a cause's settings for the machines it selects. A nil
// override field inherits the cause's setting. Selectors left empty select
// everything; the ones set must all hold.
type Rule struct {
	Name string
	Line int // where the rule is written; 0 when not parsed from a file

	Causes    []Cause           // the run's cause is one of these
	Match     map[string]string // every label is present with this value
	AppPrefix string            // the app's name starts with this
	Regions   []string          // the machine runs in one of these

	Quiet        *bool
	Wait         *time.Duration
	OnDeadline   *OnDeadline
	MaxDeferrals *int
	Window       *Window
	IdleWait     *time.Duration
	OnBusy       *OnBusy
	IdleQuietFor *time.Duration
	Undrainable  *Undrainable
	CanaryBake   *time.Duration
}

// mismatch returns why r does not select the machine, "" if it does.
func (r Rule) mismatch(c Cause, m Machine) string {
	if len(r.Causes) > 0 && !slices.Contains(r.Causes, c) {
		return fmt.Sprintf("cause %s not in %s", c, joinCauses(r.Causes))
	}
	for _, k := range slices.Sorted(maps.Keys(r.Match)) {
		got, ok := m.Labels[k]
		if !ok {
			return fmt.Sprintf("label %s missing (want %q)", k, r.Match[k])
		}
		if got != r.Match[k] {
			return fmt.Sprintf("label %s=%q (want %q)", k, got, r.Match[k])
		}
	}
	if !strings.HasPrefix(m.App, r.AppPrefix) {
		return fmt.Sprintf("app %q lacks prefix %q", m.App, r.AppPrefix)
	}
	if len(r.Regions) > 0 && !slices.Contains(r.Regions, m.Region) {
		return fmt.Sprintf("region %q not in [%s]", m.Region, strings.Join(r.Regions, ","))
	}
	return ""
}

// Matches reports whether r selects the machine for the cause.
func (r Rule) Matches(c Cause, m Machine) bool { return r.mismatch(c, m) == "" }

// subsumes reports whether r selects every machine that o selects, which
// makes o unreachable when r comes first.
func (r Rule) subsumes(o Rule) bool {
	if len(r.Causes) > 0 && (len(o.Causes) == 0 || !subset(o.Causes, r.Causes)) {
		return false
	}
	for k, v := range r.Match {
		if ov, ok := o.Match[k]; !ok || ov != v {
			return false
		}
	}
	if !strings.HasPrefix(o.AppPrefix, r.AppPrefix) {
		return false
	}
	return len(r.Regions) == 0 || (len(o.Regions) > 0 && subset(o.Regions, r.Regions))
}

func subset[T comparable](small, big []T) bool {
	for _, x := range small {
		if !slices.Contains(big, x) {
			return false
		}
	}
	return true
}

func joinCauses(cs []Cause) string {
	s := make([]string, len(cs))
	for i, c := range cs {
		s[i] = string(c)
	}
	return "[" + strings.Join(s, ",") + "]"
}

// Selector describes what r selects, e.g.
// `causes=[auto-update] match={tier=vip} app_prefix="acme-"`; "everything"
// when it has no selector.
func (r Rule) Selector() string {
	var parts []string
	if len(r.Causes) > 0 {
		parts = append(parts, "causes="+joinCauses(r.Causes))
	}
	if len(r.Match) > 0 {
		kv := make([]string, 0, len(r.Match))
		for _, k := range slices.Sorted(maps.Keys(r.Match)) {
			kv = append(kv, k+"="+r.Match[k])
		}
		parts = append(parts, "match={"+strings.Join(kv, ",")+"}")
	}
	if r.AppPrefix != "" {
		parts = append(parts, fmt.Sprintf("app_prefix=%q", r.AppPrefix))
	}
	if len(r.Regions) > 0 {
		parts = append(parts, "regions=["+strings.Join(r.Regions, ",")+"]")
	}
	if len(parts) == 0 {
		return "everything"
	}
	return strings.Join(parts, " ")
}

func (r Rule) apply(s Settings) Settings {
	if r.Quiet != nil {
		s.Quiet = *r.Quiet
	}
	if r.Wait != nil {
		s.Wait = *r.Wait
	}
	if r.OnDeadline != nil {
		s.OnDeadline = *r.OnDeadline
	}
	if r.MaxDeferrals != nil {
		s.MaxDeferrals = *r.MaxDeferrals
	}
	if r.Window != nil {
		s.Window = *r.Window
	}
	if r.IdleWait != nil {
		s.IdleWait = *r.IdleWait
	}
	if r.OnBusy != nil {
		s.OnBusy = *r.OnBusy
	}
	if r.IdleQuietFor != nil {
		s.IdleQuietFor = *r.IdleQuietFor
	}
	if r.Undrainable != nil {
		s.Undrainable = *r.Undrainable
	}
	if r.CanaryBake != nil {
		s.CanaryBake = *r.CanaryBake
	}
	return s
}

func (r Rule) clone() Rule {
	c := r
	c.Causes = slices.Clone(r.Causes)
	c.Match = maps.Clone(r.Match)
	c.Regions = slices.Clone(r.Regions)
	c.Quiet = clonePtr(r.Quiet)
	c.Wait = clonePtr(r.Wait)
	c.OnDeadline = clonePtr(r.OnDeadline)
	c.MaxDeferrals = clonePtr(r.MaxDeferrals)
	c.Window = clonePtr(r.Window)
	c.IdleWait = clonePtr(r.IdleWait)
	c.OnBusy = clonePtr(r.OnBusy)
	c.IdleQuietFor = clonePtr(r.IdleQuietFor)
	c.Undrainable = clonePtr(r.Undrainable)
	c.CanaryBake = clonePtr(r.CanaryBake)
	return c
}

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

// Policy is an immutable, validated policy; safe for concurrent use.
type Policy struct {
	causes  map[Cause]Settings
	rules   []Rule
	lane    BudgetLane
	source  string
	version string
}

// defaultSettings are the built-in settings of each cause. Every cause
// allows 3 deferrals so that a file switching a cause to defer gets a sane
// bound without also having to set max_deferrals. Routine causes look for an
// idle moment first (auto-update puts a busy agent off, the others drain it
// anyway after 10 minutes); an operator wants it now. Canaries of a new
// image bake 10 minutes before the fleet follows (a crash a minute in, a
// platform that parks on first use), 5 for configuration changes, none
// when an operator acts. The auto-update counts an idle moment only after
// 2 minutes with nothing in flight (Hermes's own idle timeout before it
// suspends itself, hermes-agent #91155): active_agents does not show
// background work, which a routine, quiet update must not cut off unseen.
func defaultSettings() map[Cause]Settings {
	return map[Cause]Settings{
		AutoUpdate: {Quiet: true, Wait: 30 * time.Minute, OnDeadline: Defer, MaxDeferrals: 3, IdleWait: 30 * time.Minute, OnBusy: BusyDefer,
			IdleQuietFor: DefaultAutoUpdateIdleQuietFor, CanaryBake: 10 * time.Minute},
		ImageMigration: {Quiet: true, Wait: 30 * time.Minute, OnDeadline: Force, MaxDeferrals: 3, IdleWait: 10 * time.Minute, OnBusy: BusyDrain,
			CanaryBake: 10 * time.Minute},
		EnvEdit: {Quiet: false, Wait: 15 * time.Minute, OnDeadline: Force, MaxDeferrals: 3, IdleWait: 10 * time.Minute, OnBusy: BusyDrain,
			CanaryBake: 5 * time.Minute},
		ProfileChange: {Quiet: false, Wait: 15 * time.Minute, OnDeadline: Force, MaxDeferrals: 3, IdleWait: 10 * time.Minute, OnBusy: BusyDrain,
			CanaryBake: 5 * time.Minute},
		Operator: {Quiet: false, Wait: 10 * time.Minute, OnDeadline: Force, MaxDeferrals: 3, OnBusy: BusyDrain},
	}
}

// DefaultAutoUpdateIdleQuietFor is the auto-update's idle_quiet_for.
const DefaultAutoUpdateIdleQuietFor = 2 * time.Minute

// defers reports whether these settings can put a machine off: at the
// deadline, or when it was never idle within the idle wait.
func (s Settings) defers() bool {
	return s.OnDeadline == Defer || s.IdleWait > 0 && s.OnBusy == BusyDefer
}

// Default returns the built-in policy used when there is no policy file.
func Default() *Policy {
	p := &Policy{causes: defaultSettings(), lane: defaultLane(), source: "built-in defaults"}
	p.version = p.computeVersion()
	return p
}

// Source names where the policy came from: a file name or "built-in defaults".
func (p *Policy) Source() string { return p.source }

// Version is a short hash of the effective policy (defaults applied), so it
// does not change with formatting, comments or the order of keys, and
// changes with any value, rule name or rule order.
func (p *Policy) Version() string { return p.version }

// Settings returns the effective settings of cause c (defaults overridden by
// the file's [causes.<c>] table).
func (p *Policy) Settings(c Cause) Settings { return p.causes[c] }

// Rules returns a copy of the rules, in the order they are tried.
func (p *Policy) Rules() []Rule {
	out := make([]Rule, len(p.rules))
	for i, r := range p.rules {
		out[i] = r.clone()
	}
	return out
}

// Skipped is a rule tried before the one that matched, and why it did not.
type Skipped struct{ Rule, Reason string }

// Explanation is a Decision with how it was reached.
type Explanation struct {
	Decision Decision
	Matched  *Rule     // nil: no rule matched, the cause's settings applied
	Skipped  []Skipped // the rules tried before, in order
}

// Decide returns the decision for moving m for cause c at now.
//
// An unknown cause fails safe: it is decided like operator (loud, forced at
// 10 minutes by default) under the rule name "unknown-cause:<cause>", since
// notifying users is the unsurprising side. Callers validate causes with
// ParseCause first.
func (p *Policy) Decide(c Cause, m Machine, now time.Time) Decision {
	return p.Explain(c, m, now).Decision
}

// Explain is Decide with the rule that matched and the rules tried before.
func (p *Policy) Explain(c Cause, m Machine, now time.Time) Explanation {
	var ex Explanation
	s, known := p.causes[c]
	rule := "default:" + string(c)
	if !known {
		s, rule = p.causes[Operator], "unknown-cause:"+string(c)
	} else {
		for i := range p.rules {
			r := &p.rules[i]
			if why := r.mismatch(c, m); why != "" {
				ex.Skipped = append(ex.Skipped, Skipped{Rule: r.Name, Reason: why})
				continue
			}
			s, rule = r.apply(s), r.Name
			matched := r.clone()
			ex.Matched = &matched
			break
		}
	}
	d := Decision{
		Quiet:        s.Quiet,
		Rule:         rule,
		Wait:         s.Wait,
		Deadline:     now.Add(s.Wait),
		OnDeadline:   s.OnDeadline,
		IdleWait:     s.IdleWait,
		OnBusy:       s.OnBusy,
		IdleQuietFor: s.IdleQuietFor,
		Version:      p.version,
		Undrainable:  s.Undrainable,
		CanaryBake:   s.CanaryBake,
	}
	if d.Undrainable == "" {
		d.Undrainable = UndrainableFail
	}
	if s.defers() {
		d.MaxDeferrals = s.MaxDeferrals
		if m.Deferrals >= s.MaxDeferrals {
			// Then force: drain at once, force at the deadline.
			d.OnDeadline = Force
			d.IdleWait = 0
			d.Rule += " (max deferrals reached)"
		}
	}
	if s.Window.IsZero() {
		d.InWindow = true
	} else {
		d.Window = s.Window.String()
		if s.Window.Contains(now) {
			d.InWindow, d.WindowEnd = true, s.Window.End(now)
		} else {
			d.NextWindow = s.Window.Next(now)
		}
	}
	ex.Decision = d
	return ex
}

// versionSchema changes when the canonical form below changes meaning.
const versionSchema = "migrator-policy/1"

type canonSettings struct {
	Cause        string `json:"cause,omitempty"`
	Quiet        *bool  `json:"quiet,omitempty"`
	WaitNS       *int64 `json:"wait_ns,omitempty"`
	OnDeadline   string `json:"on_deadline,omitempty"`
	MaxDeferrals *int   `json:"max_deferrals,omitempty"`
	Window       string `json:"window,omitempty"`
	IdleWaitNS   *int64 `json:"idle_wait_ns,omitempty"`
	OnBusy       string `json:"on_busy,omitempty"`
	// Undrainable is left out when it is "fail" (the default), so policies
	// written before the setting existed keep their version.
	Undrainable string `json:"undrainable,omitempty"`
	// CanaryBakeNS is left out when zero.
	CanaryBakeNS *int64 `json:"canary_bake_ns,omitempty"`
	// IdleQuietForNS is left out when zero.
	IdleQuietForNS *int64 `json:"idle_quiet_for_ns,omitempty"`
}

type canonLane struct {
	Causes       []string `json:"causes"`
	SharePercent float64  `json:"share_percent"`
	Min          int      `json:"min"`
}

type canonRule struct {
	Name      string            `json:"name"`
	Causes    []string          `json:"causes,omitempty"`
	Match     map[string]string `json:"match,omitempty"`
	AppPrefix string            `json:"app_prefix,omitempty"`
	Regions   []string          `json:"regions,omitempty"`
	Set       canonSettings     `json:"set"`
}

// computeVersion hashes a canonical JSON form of the effective policy:
// causes in fixed order with every setting resolved, rules in order with
// their selector lists sorted (their order has no meaning) and only the
// overrides they set.
func (p *Policy) computeVersion() string {
	var doc struct {
		Schema string          `json:"schema"`
		Causes []canonSettings `json:"causes"`
		Rules  []canonRule     `json:"rules"`
		// Lane is left out when it is the default, so policies written
		// before budget_lane existed keep their version.
		Lane *canonLane `json:"budget_lane,omitempty"`
	}
	doc.Schema = versionSchema
	if !p.lane.isDefault() {
		cl := canonLane{Causes: []string{}, SharePercent: p.lane.SharePercent, Min: p.lane.Min}
		for _, c := range p.lane.Causes {
			cl.Causes = append(cl.Causes, string(c))
		}
		slices.Sort(cl.Causes)
		doc.Lane = &cl
	}
	for _, c := range Causes() {
		s := p.causes[c]
		w, iw := int64(s.Wait), int64(s.IdleWait)
		doc.Causes = append(doc.Causes, canonSettings{
			Cause: string(c), Quiet: &s.Quiet, WaitNS: &w, OnDeadline: string(s.OnDeadline),
			MaxDeferrals: &s.MaxDeferrals, Window: s.Window.String(), IdleWaitNS: &iw, OnBusy: string(s.OnBusy),
			Undrainable: canonUndrainable(s.Undrainable), CanaryBakeNS: nonZeroNS(s.CanaryBake),
			IdleQuietForNS: nonZeroNS(s.IdleQuietFor),
		})
	}
	for _, r := range p.rules {
		cr := canonRule{Name: r.Name, Match: r.Match, AppPrefix: r.AppPrefix, Regions: slices.Sorted(slices.Values(r.Regions))}
		for _, c := range r.Causes {
			cr.Causes = append(cr.Causes, string(c))
		}
		slices.Sort(cr.Causes)
		cr.Set.Quiet = r.Quiet
		if r.Wait != nil {
			w := int64(*r.Wait)
			cr.Set.WaitNS = &w
		}
		if r.OnDeadline != nil {
			cr.Set.OnDeadline = string(*r.OnDeadline)
		}
		cr.Set.MaxDeferrals = r.MaxDeferrals
		if r.Window != nil {
			cr.Set.Window = r.Window.String()
		}
		if r.IdleWait != nil {
			iw := int64(*r.IdleWait)
			cr.Set.IdleWaitNS = &iw
		}
		if r.OnBusy != nil {
			cr.Set.OnBusy = string(*r.OnBusy)
		}
		if r.Undrainable != nil {
			// A rule that sets "fail" differs from one that inherits.
			cr.Set.Undrainable = string(*r.Undrainable)
		}
		if r.CanaryBake != nil {
			// A rule that sets 0 differs from one that inherits.
			b := int64(*r.CanaryBake)
			cr.Set.CanaryBakeNS = &b
		}
		if r.IdleQuietFor != nil {
			q := int64(*r.IdleQuietFor)
			cr.Set.IdleQuietForNS = &q
		}
		doc.Rules = append(doc.Rules, cr)
	}
	b, err := json.Marshal(doc)
	if err != nil {
		panic("policy: canonical form does not marshal: " + err.Error()) // only plain types above
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}

func canonUndrainable(u Undrainable) string {
	if u == UndrainableFail {
		return ""
	}
	return string(u)
}

func nonZeroNS(d time.Duration) *int64 {
	if d == 0 {
		return nil
	}
	n := int64(d)
	return &n
}
