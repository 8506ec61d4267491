package policy_test

import (
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/policy"
)

func mustParse(t *testing.T, src string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse("p.toml", []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

func TestParseCause(t *testing.T) {
	for _, c := range policy.Causes() {
		got, err := policy.ParseCause(string(c))
		if err != nil || got != c {
			t.Errorf("ParseCause(%q) = %q, %v", c, got, err)
		}
	}
	_, err := policy.ParseCause("autoupdate")
	want := `unknown cause "autoupdate" (valid: auto-update, image-migration, env-edit, profile-change, operator)`
	if err == nil || err.Error() != want {
		t.Errorf("ParseCause(autoupdate) = %v, want %q", err, want)
	}
}

// want is the part of a Decision a case checks; Deadline, Version and the
// window fields are checked for every case from these.
type want struct {
	quiet        bool
	rule         string
	wait         time.Duration
	onDeadline   policy.OnDeadline
	maxDeferrals int
}

func checkDecision(t *testing.T, name string, p *policy.Policy, d policy.Decision, now time.Time, w want) {
	t.Helper()
	got := want{d.Quiet, d.Rule, d.Wait, d.OnDeadline, d.MaxDeferrals}
	if got != w {
		t.Errorf("%s:\n got %+v\nwant %+v", name, got, w)
	}
	if !d.Deadline.Equal(now.Add(w.wait)) {
		t.Errorf("%s: deadline %v, want now+%v", name, d.Deadline, w.wait)
	}
	if d.Version != p.Version() || len(d.Version) != 12 {
		t.Errorf("%s: version %q, want the policy's %q", name, d.Version, p.Version())
	}
}

func TestDecideDefaults(t *testing.T) {
	p := policy.Default()
	now := utc("2026-03-08T07:30:00Z")
	m := policy.Machine{App: "acme-agent", MachineID: "m1", Region: "iad"}
	cases := []struct {
		cause     policy.Cause
		deferrals int
		want      want
	}{
		{policy.AutoUpdate, 0, want{true, "default:auto-update", 30 * time.Minute, policy.Defer, 3}},
		{policy.AutoUpdate, 2, want{true, "default:auto-update", 30 * time.Minute, policy.Defer, 3}},
		{policy.AutoUpdate, 3, want{true, "default:auto-update (max deferrals reached)", 30 * time.Minute, policy.Force, 3}},
		{policy.AutoUpdate, 9, want{true, "default:auto-update (max deferrals reached)", 30 * time.Minute, policy.Force, 3}},
		{policy.ImageMigration, 0, want{true, "default:image-migration", 30 * time.Minute, policy.Force, 0}},
		{policy.EnvEdit, 0, want{false, "default:env-edit", 15 * time.Minute, policy.Force, 0}},
		{policy.ProfileChange, 0, want{false, "default:profile-change", 15 * time.Minute, policy.Force, 0}},
		{policy.Operator, 0, want{false, "default:operator", 10 * time.Minute, policy.Force, 0}},
		// Fails safe: loud and forced like operator.
		{policy.Cause("bogus"), 0, want{false, "unknown-cause:bogus", 10 * time.Minute, policy.Force, 0}},
	}
	for _, c := range cases {
		m.Deferrals = c.deferrals
		d := p.Decide(c.cause, m, now)
		checkDecision(t, string(c.cause), p, d, now, c.want)
		if !d.InWindow || d.Window != "" || !d.NextWindow.IsZero() || !d.WindowEnd.IsZero() {
			t.Errorf("%s: default has no window, got %+v", c.cause, d)
		}
	}
	if policy.Default().Source() != "built-in defaults" {
		t.Errorf("Source = %q", policy.Default().Source())
	}
}

const overridesPolicy = `
[causes.auto-update]
wait = "45m"
max_deferrals = 5

[causes.image-migration]
quiet = false
on_deadline = "defer"        # no max_deferrals: the default 3 applies

[causes.operator]
wait = "1h30m"               # beyond the marker's 1h expiry is fine

[[rules]]
name = "vip"
causes = ["auto-update", "image-migration"]
match = { tier = "vip" }
quiet = false
wait = "2h"

[[rules]]
name = "vip-eu"              # also matches VIPs, but comes second
match = { tier = "vip", zone = "eu" }
wait = "3h"

[[rules]]
name = "canary"
app_prefix = "hermes-canary-"
regions = ["iad", "ewr"]
on_deadline = "force"
wait = "5m"

[[rules]]
name = "patient"
causes = ["auto-update"]
match = { patience = "high" }
max_deferrals = 1
`

func TestDecideOverridesAndRules(t *testing.T) {
	p := mustParse(t, overridesPolicy)
	now := utc("2026-03-08T07:30:00Z")
	plain := policy.Machine{App: "acme", MachineID: "m1", Region: "ams"}
	vip := plain
	vip.Labels = map[string]string{"tier": "vip", "zone": "eu"}
	canary := policy.Machine{App: "hermes-canary-1", Region: "iad"}
	canaryElsewhere := policy.Machine{App: "hermes-canary-1", Region: "syd"}
	patient := policy.Machine{App: "slow", Labels: map[string]string{"patience": "high"}}
	cases := []struct {
		name  string
		cause policy.Cause
		m     policy.Machine
		defs  int
		want  want
	}{
		{"cause override keeps unset fields", policy.AutoUpdate, plain, 0, want{true, "default:auto-update", 45 * time.Minute, policy.Defer, 5}},
		{"cause override max deferrals", policy.AutoUpdate, plain, 5, want{true, "default:auto-update (max deferrals reached)", 45 * time.Minute, policy.Force, 5}},
		{"defer without max uses default 3", policy.ImageMigration, plain, 2, want{false, "default:image-migration", 30 * time.Minute, policy.Defer, 3}},
		{"defer without max escalates at 3", policy.ImageMigration, plain, 3, want{false, "default:image-migration (max deferrals reached)", 30 * time.Minute, policy.Force, 3}},
		{"long wait", policy.Operator, plain, 0, want{false, "default:operator", 90 * time.Minute, policy.Force, 0}},
		{"first match wins", policy.AutoUpdate, vip, 0, want{false, "vip", 2 * time.Hour, policy.Defer, 5}},
		{"rule inherits cause on_deadline", policy.ImageMigration, vip, 0, want{false, "vip", 2 * time.Hour, policy.Defer, 3}},
		{"rule escalates with its name", policy.AutoUpdate, vip, 5, want{false, "vip (max deferrals reached)", 2 * time.Hour, policy.Force, 5}},
		{"causes selector skips to next rule", policy.EnvEdit, vip, 0, want{false, "vip-eu", 3 * time.Hour, policy.Force, 0}},
		// The rule forces at the deadline, but a busy agent is still put
		// off by the cause's on_busy = "defer", so deferrals count.
		{"prefix and region", policy.AutoUpdate, canary, 0, want{true, "canary", 5 * time.Minute, policy.Force, 5}},
		{"region outside selector", policy.AutoUpdate, canaryElsewhere, 0, want{true, "default:auto-update", 45 * time.Minute, policy.Defer, 5}},
		{"rule max_deferrals", policy.AutoUpdate, patient, 0, want{true, "patient", 45 * time.Minute, policy.Defer, 1}},
		{"rule max_deferrals reached", policy.AutoUpdate, patient, 1, want{true, "patient (max deferrals reached)", 45 * time.Minute, policy.Force, 1}},
		{"rule limited to auto-update", policy.Operator, patient, 0, want{false, "default:operator", 90 * time.Minute, policy.Force, 0}},
	}
	for _, c := range cases {
		c.m.Deferrals = c.defs
		checkDecision(t, c.name, p, p.Decide(c.cause, c.m, now), now, c.want)
	}
}

func TestDecideIdleWait(t *testing.T) {
	p := mustParse(t, `
[causes.image-migration]
on_busy = "defer"            # the deferrals count from the busy side alone

[causes.operator]
idle_wait = "2m"

[[rules]]
name = "night-owls"
match = { chatty = "yes" }
idle_wait = "1h"
on_busy = "drain"

[[rules]]
name = "now"
match = { urgent = "yes" }
idle_wait = "0s"
`)
	now := utc("2026-03-08T07:30:00Z")
	plain := policy.Machine{App: "a"}
	chatty := policy.Machine{App: "a", Labels: map[string]string{"chatty": "yes"}}
	urgent := policy.Machine{App: "a", Labels: map[string]string{"urgent": "yes"}}
	type idle struct {
		idleWait     time.Duration
		onBusy       policy.OnBusy
		onDeadline   policy.OnDeadline
		maxDeferrals int
		rule         string
	}
	cases := []struct {
		name  string
		p     *policy.Policy
		cause policy.Cause
		m     policy.Machine
		defs  int
		want  idle
	}{
		{"default auto-update", policy.Default(), policy.AutoUpdate, plain, 0, idle{30 * time.Minute, policy.BusyDefer, policy.Defer, 3, "default:auto-update"}},
		{"default auto-update, 2 deferrals", policy.Default(), policy.AutoUpdate, plain, 2, idle{30 * time.Minute, policy.BusyDefer, policy.Defer, 3, "default:auto-update"}},
		// Then force: no idle wait, drain at once, force at the deadline.
		{"default auto-update, max deferrals", policy.Default(), policy.AutoUpdate, plain, 3, idle{0, policy.BusyDefer, policy.Force, 3, "default:auto-update (max deferrals reached)"}},
		{"default image-migration", policy.Default(), policy.ImageMigration, plain, 0, idle{10 * time.Minute, policy.BusyDrain, policy.Force, 0, "default:image-migration"}},
		{"default env-edit", policy.Default(), policy.EnvEdit, plain, 0, idle{10 * time.Minute, policy.BusyDrain, policy.Force, 0, "default:env-edit"}},
		{"default profile-change", policy.Default(), policy.ProfileChange, plain, 0, idle{10 * time.Minute, policy.BusyDrain, policy.Force, 0, "default:profile-change"}},
		{"default operator begins at once", policy.Default(), policy.Operator, plain, 0, idle{0, policy.BusyDrain, policy.Force, 0, "default:operator"}},
		{"unknown cause is decided like operator", policy.Default(), policy.Cause("bogus"), plain, 0, idle{0, policy.BusyDrain, policy.Force, 0, "unknown-cause:bogus"}},
		{"on_busy defer alone allows deferrals", p, policy.ImageMigration, plain, 2, idle{10 * time.Minute, policy.BusyDefer, policy.Force, 3, "default:image-migration"}},
		{"on_busy defer alone escalates", p, policy.ImageMigration, plain, 3, idle{0, policy.BusyDefer, policy.Force, 3, "default:image-migration (max deferrals reached)"}},
		{"cause override", p, policy.Operator, plain, 0, idle{2 * time.Minute, policy.BusyDrain, policy.Force, 0, "default:operator"}},
		{"rule overrides both", p, policy.AutoUpdate, chatty, 0, idle{time.Hour, policy.BusyDrain, policy.Defer, 3, "night-owls"}},
		{"rule with drain still escalates on deadline deferrals", p, policy.AutoUpdate, chatty, 3, idle{0, policy.BusyDrain, policy.Force, 3, "night-owls (max deferrals reached)"}},
		{"rule idle_wait 0 keeps the cause's on_busy", p, policy.AutoUpdate, urgent, 0, idle{0, policy.BusyDefer, policy.Defer, 3, "now"}},
		{"rule idle_wait 0 without deadline deferral", p, policy.EnvEdit, urgent, 0, idle{0, policy.BusyDrain, policy.Force, 0, "now"}},
	}
	for _, c := range cases {
		c.m.Deferrals = c.defs
		d := c.p.Decide(c.cause, c.m, now)
		got := idle{d.IdleWait, d.OnBusy, d.OnDeadline, d.MaxDeferrals, d.Rule}
		if got != c.want {
			t.Errorf("%s:\n got %+v\nwant %+v", c.name, got, c.want)
		}
	}
}

func TestDecideLabelMustBePresent(t *testing.T) {
	p := mustParse(t, `
[[rules]]
name = "x"
match = { tier = "vip" }
quiet = false
`)
	m := policy.Machine{App: "a", Labels: map[string]string{"tier": "VIP"}}
	if d := p.Decide(policy.AutoUpdate, m, utc("2026-01-01T00:00:00Z")); d.Rule != "default:auto-update" {
		t.Errorf("label values compare exactly: got rule %q", d.Rule)
	}
}

func TestDecideWindow(t *testing.T) {
	p := mustParse(t, `
[causes.auto-update]
window = "Mon-Fri 02:00-05:00 America/New_York"

[[rules]]
name = "anytime"
match = { urgent = "yes" }
window = "always"
`)
	m := policy.Machine{App: "a"}
	// Friday 2026-03-06 03:00 EST: inside.
	in := p.Decide(policy.AutoUpdate, m, utc("2026-03-06T08:00:00Z"))
	if !in.InWindow || !in.NextWindow.IsZero() || !in.WindowEnd.Equal(utc("2026-03-06T10:00:00Z")) ||
		in.Window != "Mon-Fri 02:00-05:00 America/New_York" {
		t.Errorf("inside: %+v", in)
	}
	// Saturday: outside; opens Monday 02:00 EDT (DST began Sunday).
	out := p.Decide(policy.AutoUpdate, m, utc("2026-03-07T08:00:00Z"))
	if out.InWindow || !out.NextWindow.Equal(utc("2026-03-09T06:00:00Z")) || !out.WindowEnd.IsZero() {
		t.Errorf("outside: %+v", out)
	}
	// A rule can lift the window.
	m.Labels = map[string]string{"urgent": "yes"}
	if d := p.Decide(policy.AutoUpdate, m, utc("2026-03-07T08:00:00Z")); !d.InWindow || d.Window != "" || d.Rule != "anytime" {
		t.Errorf("window = always: %+v", d)
	}
	// Other causes keep no window.
	if d := p.Decide(policy.Operator, policy.Machine{App: "a"}, utc("2026-03-07T08:00:00Z")); !d.InWindow {
		t.Errorf("operator has no window: %+v", d)
	}
}

func TestExplain(t *testing.T) {
	p := mustParse(t, overridesPolicy)
	m := policy.Machine{App: "hermes-canary-7", Region: "ewr", Labels: map[string]string{"tier": "gold"}}
	ex := p.Explain(policy.AutoUpdate, m, utc("2026-03-08T07:30:00Z"))
	if ex.Matched == nil || ex.Matched.Name != "canary" || ex.Decision.Rule != "canary" {
		t.Fatalf("matched %+v, decision %+v", ex.Matched, ex.Decision)
	}
	wantSkipped := []policy.Skipped{
		{Rule: "vip", Reason: `label tier="gold" (want "vip")`},
		{Rule: "vip-eu", Reason: `label tier="gold" (want "vip")`},
	}
	if len(ex.Skipped) != len(wantSkipped) {
		t.Fatalf("skipped %+v", ex.Skipped)
	}
	for i := range wantSkipped {
		if ex.Skipped[i] != wantSkipped[i] {
			t.Errorf("skipped[%d] = %+v, want %+v", i, ex.Skipped[i], wantSkipped[i])
		}
	}
	if got := ex.Matched.Selector(); got != `app_prefix="hermes-canary-" regions=[iad,ewr]` {
		t.Errorf("Selector = %q", got)
	}
	// Explain hands out copies.
	*ex.Matched.Wait = time.Hour
	ex.Matched.Regions[0] = "zzz"
	if d := p.Decide(policy.AutoUpdate, m, utc("2026-03-08T07:30:00Z")); d.Wait != 5*time.Minute || p.Rules()[2].Regions[0] != "iad" {
		t.Errorf("policy changed through Explain's result")
	}
	ex = p.Explain(policy.AutoUpdate, policy.Machine{App: "x"}, utc("2026-03-08T07:30:00Z"))
	if ex.Matched != nil || len(ex.Skipped) != 4 {
		t.Errorf("no match: %+v", ex)
	}
}

func TestExampleFile(t *testing.T) {
	p, err := policy.Parse("testdata/example.toml", readFile(t, "testdata/example.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(p.Rules()); n != 3 {
		t.Fatalf("%d rules", n)
	}
	m := policy.Machine{App: "acme", Region: "fra"}
	// Wednesday 2026-03-11 01:30Z is 02:30 in Berlin: the eu-night window.
	d := p.Decide(policy.AutoUpdate, m, utc("2026-03-11T01:30:00Z"))
	if d.Rule != "eu-night" || !d.InWindow || d.Wait != 45*time.Minute || d.MaxDeferrals != 5 {
		t.Errorf("eu machine: %+v", d)
	}
}

func TestVersion(t *testing.T) {
	base := `
[causes.auto-update]
wait = "45m"
on_deadline = "defer"
window = "Mon-Fri 02:00-05:00 America/New_York"

[[rules]]
name = "vip"
causes = ["auto-update", "operator"]
match = { tier = "vip", plan = "pro" }
regions = ["iad", "ewr"]
wait = "2h"

[[rules]]
name = "eu"
regions = ["fra"]
quiet = false
`
	same := map[string]string{
		"reordered keys, comments and whitespace": `
# the same policy, written differently
[[rules]]
wait="120m"
regions=["ewr","iad"]
match={plan="pro",tier="vip"}
causes=["operator","auto-update"]
name="vip"
[[rules]]
quiet=false
name="eu"
regions=["fra"]
[causes.auto-update]
window="mon-fri 02:00-05:00 America/New_York"
on_deadline="defer"
wait="0.75h"
`,
		"inline rules": `
causes = { auto-update = { wait = "45m", on_deadline = "defer", window = "Mon,Tue,Wed,Thu,Fri 02:00-05:00 America/New_York" } }
rules = [
  { name = "vip", causes = ["auto-update", "operator"], match = { tier = "vip", plan = "pro" }, regions = ["iad", "ewr"], wait = "2h" },
  { name = "eu", regions = ["fra"], quiet = false },
]
`,
	}
	different := map[string]string{
		"a value":             strings.Replace(base, `wait = "2h"`, `wait = "3h"`, 1),
		"a rule name":         strings.Replace(base, `name = "eu"`, `name = "europe"`, 1),
		"a selector":          strings.Replace(base, `regions = ["fra"]`, `regions = ["fra", "ams"]`, 1),
		"the window":          strings.Replace(base, "02:00-05:00", "02:00-06:00", 1),
		"an added key":        strings.Replace(base, `quiet = false`, "quiet = false\nmax_deferrals = 2", 1),
		"a rule's idle_wait":  strings.Replace(base, `quiet = false`, "quiet = false\nidle_wait = \"5m\"", 1),
		"a rule's on_busy":    strings.Replace(base, `quiet = false`, "quiet = false\non_busy = \"drain\"", 1),
		"a cause's idle_wait": strings.Replace(base, `wait = "45m"`, "wait = \"45m\"\nidle_wait = \"5m\"", 1),
		"the rule order":      "[causes.auto-update]\nwait = \"45m\"\nwindow = \"Mon-Fri 02:00-05:00 America/New_York\"\n[[rules]]\nname = \"eu\"\nregions = [\"fra\"]\nquiet = false\n[[rules]]\nname = \"vip\"\ncauses = [\"auto-update\", \"operator\"]\nmatch = { tier = \"vip\", plan = \"pro\" }\nregions = [\"iad\", \"ewr\"]\nwait = \"2h\"\n",
		"no rules at all":     "[causes.auto-update]\nwait = \"45m\"\nwindow = \"Mon-Fri 02:00-05:00 America/New_York\"\n",
	}
	v := mustParse(t, base).Version()
	for name, src := range same {
		if got := mustParse(t, src).Version(); got != v {
			t.Errorf("%s: version %s, want %s", name, got, v)
		}
	}
	seen := map[string]string{v: "base"}
	for name, src := range different {
		got := mustParse(t, src).Version()
		if prev, dup := seen[got]; dup {
			t.Errorf("changing %s gives version %s, same as %s", name, got, prev)
		}
		seen[got] = name
	}
	// Restating the defaults is the default policy.
	restated := `
[causes.auto-update]
quiet = true
wait = "30m"
on_deadline = "defer"
max_deferrals = 3
idle_wait = "30m"
on_busy = "defer"
[causes.operator]
wait = "10m"
idle_wait = "0s"
`
	if d, e, r := policy.Default().Version(), mustParse(t, "").Version(), mustParse(t, restated).Version(); d != e || d != r {
		t.Errorf("default %s, empty file %s, restated defaults %s", d, e, r)
	}
}

// TestDecideIdleQuietFor: the auto-update counts an idle moment only after
// 2 minutes with nothing in flight (background work is not in
// active_agents); the other causes need no quiet unless a file says so; a
// cause or a rule sets it, and it is part of the version.
func TestDecideIdleQuietFor(t *testing.T) {
	now := time.Date(2026, 3, 9, 12, 0, 0, 0, time.UTC)
	m := policy.Machine{App: "acme", Labels: map[string]string{"tier": "vip"}}
	def := policy.Default()
	for c, want := range map[policy.Cause]time.Duration{policy.AutoUpdate: 2 * time.Minute, policy.ImageMigration: 0,
		policy.EnvEdit: 0, policy.ProfileChange: 0, policy.Operator: 0} {
		if got := def.Decide(c, m, now).IdleQuietFor; got != want {
			t.Errorf("%s: idle_quiet_for %s, want %s", c, got, want)
		}
	}
	p := mustParse(t, `
[causes.image-migration]
idle_quiet_for = "90s"

[[rules]]
name = "vip"
match = { tier = "vip" }
idle_quiet_for = "0s"
`)
	if got := p.Decide(policy.ImageMigration, policy.Machine{App: "other"}, now).IdleQuietFor; got != 90*time.Second {
		t.Errorf("cause setting: %s", got)
	}
	if got := p.Decide(policy.AutoUpdate, m, now).IdleQuietFor; got != 0 {
		t.Errorf("rule setting 0s: %s", got)
	}
	zero := mustParse(t, "[causes.auto-update]\nidle_quiet_for = \"0s\"\n")
	if zero.Version() == def.Version() {
		t.Error("idle_quiet_for is not part of the version")
	}
	same := mustParse(t, "[causes.auto-update]\nidle_quiet_for = \"120s\"\n")
	if same.Version() != def.Version() {
		t.Errorf("restating the default changed the version: %s vs %s", same.Version(), def.Version())
	}
	for _, bad := range []string{`"-1s"`, `"2h"`, `"soon"`, `120`} {
		if _, err := policy.Parse("p.toml", []byte("[causes.auto-update]\nidle_quiet_for = "+bad+"\n")); err == nil {
			t.Errorf("idle_quiet_for = %s accepted", bad)
		}
	}
}
