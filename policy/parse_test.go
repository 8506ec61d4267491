package policy_test

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/hermes-cloud/migrator/policy"
)

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name string
		src  string
		want string // the whole error text
	}{
		{"toml syntax", "[causes.auto-update]\nwait = \"45m\nquiet = true\n",
			`p.toml:2: strings cannot contain newlines`},
		{"unknown top-level key", "\n\nschedule = \"@daily\"\n",
			`p.toml:3: unknown key "schedule" (want [causes.<cause>] tables, [[rules]] or [budget_lane])`},
		{"unknown cause table", "[causes.auto-update]\nwait = \"1h\"\n\n[causes.autoupdate]\nwait = \"1h\"\n",
			`p.toml:4: [causes.autoupdate]: unknown cause "autoupdate" (valid: auto-update, image-migration, env-edit, profile-change, operator)`},
		{"unknown key in cause", "[causes.operator]\nwait = \"1h\"\nquite = true\n",
			`p.toml:3: causes.operator: unknown key "quite" (want quiet, wait, on_deadline, max_deferrals, window, idle_wait, on_busy, idle_quiet_for, undrainable, canary_bake)`},
		{"bad duration", "[causes.operator]\nwait = \"45 minutes\"\n",
			`p.toml:2: causes.operator: wait: "45 minutes" is not a duration (want e.g. "45m" or "1h30m")`},
		{"duration as integer", "[causes.operator]\nwait = 45\n",
			`p.toml:2: causes.operator: wait: want a duration such as "45m", got an integer`},
		{"zero duration", "[causes.operator]\nwait = \"0s\"\n",
			`p.toml:2: causes.operator: wait: "0s": want at least 1s`},
		{"negative duration", "[causes.operator]\nwait = \"-5m\"\n",
			`p.toml:2: causes.operator: wait: "-5m": want at least 1s`},
		{"too long", "[causes.operator]\nwait = \"25h\"\n",
			`p.toml:2: causes.operator: wait: "25h": want at most 24h0m0s`},
		{"bad on_deadline", "[causes.auto-update]\non_deadline = \"later\"\n",
			`p.toml:2: causes.auto-update: on_deadline: "later": want "force" or "defer"`},
		{"bad max_deferrals", "[causes.auto-update]\nmax_deferrals = -1\n",
			`p.toml:2: causes.auto-update: max_deferrals: -1: want 0 to 100`},
		{"max_deferrals as string", "[causes.auto-update]\nmax_deferrals = \"3\"\n",
			`p.toml:2: causes.auto-update: max_deferrals: want an integer, got a string`},
		{"quiet as string", "[causes.auto-update]\nquiet = \"yes\"\n",
			`p.toml:2: causes.auto-update: quiet: want true or false, got a string`},
		{"bad window", "[causes.auto-update]\nwindow = \"Mon-Fri 02:00-05:00 Mars/Olympus\"\n",
			`p.toml:2: causes.auto-update: window: "Mon-Fri 02:00-05:00 Mars/Olympus": unknown time zone "Mars/Olympus": want an IANA name such as UTC or America/New_York`},
		{"bad idle_wait", "[causes.auto-update]\nwait = \"1h\"\nidle_wait = \"a while\"\n",
			`p.toml:3: causes.auto-update: idle_wait: "a while" is not a duration (want e.g. "10m", or "0s" to begin at once)`},
		{"negative idle_wait", "[causes.env-edit]\nidle_wait = \"-1m\"\n",
			`p.toml:2: causes.env-edit: idle_wait: "-1m": want 0s or more`},
		{"idle_wait too long", "[causes.env-edit]\nidle_wait = \"48h\"\n",
			`p.toml:2: causes.env-edit: idle_wait: "48h": want at most 24h0m0s`},
		{"idle_wait as integer", "[causes.env-edit]\nidle_wait = 0\n",
			`p.toml:2: causes.env-edit: idle_wait: want a duration such as "10m" ("0s": begin at once), got an integer`},
		{"bad on_busy", "[causes.auto-update]\non_busy = \"force\"\n",
			`p.toml:2: causes.auto-update: on_busy: "force": want "defer" or "drain"`},
		{"on_busy as boolean", "[causes.auto-update]\non_busy = true\n",
			`p.toml:2: causes.auto-update: on_busy: want "defer" or "drain", got a boolean`},
		{"bad on_busy in an early rule", "[[rules]]\nname = \"a\"\nregions = [\"iad\"]\non_busy = \"wait\"\n\n[[rules]]\nname = \"b\"\nregions = [\"fra\"]\non_busy = \"drain\"\n",
			`p.toml:4: rule "a": on_busy: "wait": want "defer" or "drain"`},
		{"cause not a table", "causes = 3\n",
			`p.toml:1: causes must be a table of causes such as [causes.auto-update], got an integer`},
		{"rules not an array", "[rules]\nname = \"x\"\n",
			`p.toml:1: rules must be an array of tables ([[rules]]), got a table`},
		{"missing name", "[[rules]]\nname = \"a\"\nquiet = true\n\n[[rules]]\nquiet = false\n",
			`p.toml:5: rules[1]: missing name`},
		{"bad name", "[[rules]]\nname = \"vip customers\"\n",
			`p.toml:2: rules[0]: name "vip customers": want 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit`},
		{"reserved-looking name", "[[rules]]\nname = \"default:auto-update\"\n",
			`p.toml:2: rules[0]: name "default:auto-update": want 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit`},
		{"duplicate rule name", "[[rules]]\nname = \"vip\"\nmatch = { tier = \"vip\" }\n\n[[rules]]\nname = \"eu\"\nregions = [\"fra\"]\n\n[[rules]]\nname = \"vip\"\nregions = [\"iad\"]\n",
			`p.toml:10: duplicate rule name "vip" (first used at line 1)`},
		// The error is in the first of three rules that all set wait: the
		// toml package alone would report the last rule's line.
		{"bad value in an early rule", "[[rules]]\nname = \"a\"\nmatch = { a = \"1\" }\nwait = \"soon\"\n\n[[rules]]\nname = \"b\"\nmatch = { b = \"1\" }\nwait = \"1h\"\n\n[[rules]]\nname = \"c\"\nmatch = { c = \"1\" }\nwait = \"1h\"\n",
			`p.toml:4: rule "a": wait: "soon" is not a duration (want e.g. "45m" or "1h30m")`},
		{"wrong type in an early rule", "[[rules]]\nname = \"a\"\nregions = [\"iad\"]\nquiet = \"no\"\n\n[[rules]]\nname = \"b\"\nregions = [\"fra\"]\nquiet = true\n",
			`p.toml:4: rule "a": quiet: want true or false, got a string`},
		{"unknown key in rule", "[[rules]]\nname = \"a\"\nregions = [\"iad\"]\n\n[[rules]]\nname = \"b\"\nlabels = { tier = \"vip\" }\n",
			`p.toml:7: rule "b": unknown key "labels" (want name, causes, match, app_prefix, regions, quiet, wait, on_deadline, max_deferrals, window, idle_wait, on_busy, idle_quiet_for, undrainable, canary_bake)`},
		{"unknown cause in rule", "[[rules]]\nname = \"a\"\ncauses = [\n  \"auto-update\",\n  \"cron\",\n]\n",
			`p.toml:5: rule "a": causes: unknown cause "cron" (valid: auto-update, image-migration, env-edit, profile-change, operator)`},
		{"cause listed twice", "[[rules]]\nname = \"a\"\ncauses = [\"operator\", \"operator\"]\n",
			`p.toml:3: rule "a": causes: operator listed twice`},
		{"empty causes", "[[rules]]\nname = \"a\"\ncauses = []\n",
			`p.toml:3: rule "a": causes: empty; leave it out to match everything`},
		{"bad window in rule", "[[rules]]\nname = \"a\"\nregions = [\"iad\"]\nwindow = \"Mon-Fri 2-5\"\n",
			`p.toml:4: rule "a": window: "Mon-Fri 2-5": want "DAYS HH:MM-HH:MM ZONE", e.g. "Mon-Fri 02:00-05:00 America/New_York"`},
		{"empty match", "[[rules]]\nname = \"a\"\nmatch = {}\n",
			`p.toml:3: rule "a": match: empty; leave it out to match every machine`},
		{"label value not a string", "[[rules]]\nname = \"a\"\nmatch = { tier = \"vip\", canary = true }\n",
			`p.toml:3: rule "a": match: label "canary": want a non-empty string value, got a boolean`},
		{"label in a sub-table of an early rule", "[[rules]]\nname = \"a\"\n[rules.match]\ntier = \"vip\"\nzone = 7\n\n[[rules]]\nname = \"b\"\n[rules.match]\nzone = \"eu\"\n",
			`p.toml:5: rule "a": match: label "zone": want a non-empty string value, got an integer`},
		{"bad region", "[[rules]]\nname = \"a\"\nregions = [\"iad\", \"FRA\"]\n",
			`p.toml:3: rule "a": regions: "FRA": want a Fly region code such as "iad"`},
		{"empty app_prefix", "[[rules]]\nname = \"a\"\napp_prefix = \"\"\n",
			`p.toml:3: rule "a": app_prefix: want the start of a Fly app name (lowercase letters, digits, '-'), got ""`},
		{"uppercase app_prefix", "[[rules]]\nname = \"a\"\napp_prefix = \"Acme-\"\n",
			`p.toml:3: rule "a": app_prefix: want the start of a Fly app name (lowercase letters, digits, '-'), got "Acme-"`},
		// A header inside a multi-line string is content, not a rule.
		{"fake header inside a string", "[[rules]]\nname = \"a\"\n[rules.match]\nnote = '''\n[[rules]]\nname = \"zz\"\n'''\n[[rules]]\nname = \"b\"\nwait = \"x\"\n",
			`p.toml:10: rule "b": wait: "x" is not a duration (want e.g. "45m" or "1h30m")`},
		{"inline array of rules", "rules = [\n  { name = \"a\", regions = [\"iad\"] },\n  { name = \"b\", wait = \"never\" },\n]\n",
			`p.toml:3: rule "b": wait: "never" is not a duration (want e.g. "45m" or "1h30m")`},
		{"unreachable after catch-all", "[[rules]]\nname = \"all\"\nquiet = false\n\n[[rules]]\nname = \"vip\"\nmatch = { tier = \"vip\" }\n",
			`p.toml:5: rule "vip" can never match: rule "all" (line 1) comes first and selects every machine it would`},
		{"unreachable after broader rule", "[[rules]]\nname = \"vip\"\ncauses = [\"auto-update\", \"operator\"]\nmatch = { tier = \"vip\" }\n\n[[rules]]\nname = \"vip-iad\"\ncauses = [\"operator\"]\nmatch = { tier = \"vip\", zone = \"us\" }\nregions = [\"iad\"]\n",
			`p.toml:6: rule "vip-iad" can never match: rule "vip" (line 1) comes first and selects every machine it would`},
	}
	for _, c := range cases {
		_, err := policy.Parse("p.toml", []byte(c.src))
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		if err.Error() != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, err, c.want)
		}
		var pe *policy.Error
		if !errors.As(err, &pe) || pe.File != "p.toml" || pe.Line == 0 {
			t.Errorf("%s: error %#v is not a located *policy.Error", c.name, err)
		}
	}
}

func TestParseAcceptsNarrowerRuleAfterDisjointOne(t *testing.T) {
	// Neither rule selects everything the other does: both are reachable.
	mustParse(t, `
[[rules]]
name = "vip-us"
match = { tier = "vip" }
regions = ["iad"]
[[rules]]
name = "vip"
match = { tier = "vip" }
`)
}

// configFile is how the config loader (issue 5) embeds a policy.
type configFile struct {
	Schedule string         `toml:"schedule"`
	Channel  string         `toml:"channel"`
	Policy   toml.Primitive `toml:"policy"`
}

func TestParseTable(t *testing.T) {
	src := `schedule = "*/30 * * * *"
channel = "stable"

[policy.causes.auto-update]
wait = "45m"

[[policy.rules]]
name = "vip"
match = { tier = "vip" }
quiet = false
`
	var cfg configFile
	md, err := toml.Decode(src, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.ParseTable("migrator.toml", []byte(src), &md, cfg.Policy, "policy")
	if err != nil {
		t.Fatal(err)
	}
	if und := md.Undecoded(); len(und) != 0 {
		t.Errorf("keys left undecoded after ParseTable: %v", und)
	}
	standalone := mustParse(t, "[causes.auto-update]\nwait = \"45m\"\n[[rules]]\nname = \"vip\"\nmatch = { tier = \"vip\" }\nquiet = false\n")
	if p.Version() != standalone.Version() || p.Source() != "migrator.toml" {
		t.Errorf("embedded version %s (source %s), standalone %s", p.Version(), p.Source(), standalone.Version())
	}

	// Errors name the line in the whole file.
	bad := strings.Replace(src, `quiet = false`, `quiet = false`+"\nwiat = \"1h\"", 1)
	md, err = toml.Decode(bad, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = policy.ParseTable("migrator.toml", []byte(bad), &md, cfg.Policy, "policy")
	want := `migrator.toml:11: rule "vip": unknown key "wiat" (want name, causes, match, app_prefix, regions, quiet, wait, on_deadline, max_deferrals, window, idle_wait, on_busy, idle_quiet_for, undrainable, canary_bake)`
	if err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}

	// A rest of the file with an unknown key is still the caller's to find.
	other := "schedul = \"@daily\"\n"
	md, err = toml.Decode(other, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	p, err = policy.ParseTable("migrator.toml", []byte(other), &md, cfg.Policy, "policy")
	if err != nil || p.Version() != policy.Default().Version() {
		t.Errorf("no [policy] table: %v, %v", p, err)
	}
	if und := md.Undecoded(); len(und) != 1 || und[0].String() != "schedul" {
		t.Errorf("undecoded %v, want [schedul]", und)
	}

	// A policy that is not a table.
	notTable := "policy = \"strict\"\n"
	md, err = toml.Decode(notTable, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = policy.ParseTable("migrator.toml", []byte(notTable), &md, cfg.Policy, "policy")
	if err == nil || err.Error() != `migrator.toml:1: policy must be a table, got a string` {
		t.Errorf("got %v", err)
	}
}

func TestRulesAccessors(t *testing.T) {
	p := mustParse(t, overridesPolicy)
	rules := p.Rules()
	if len(rules) != 4 || rules[0].Name != "vip" || rules[0].Line != 13 || *rules[0].Wait != 2*time.Hour || rules[0].OnDeadline != nil {
		t.Fatalf("rules[0] = %+v", rules[0])
	}
	if s := p.Settings(policy.AutoUpdate); s.Wait != 45*time.Minute || s.MaxDeferrals != 5 || s.OnDeadline != policy.Defer || !s.Quiet {
		t.Errorf("auto-update settings %+v", s)
	}
}

// FuzzParse: no input panics, every error is one line, and a policy that
// parses decides without panicking and has a stable version.
func FuzzParse(f *testing.F) {
	f.Add(string(readFileF(f, "testdata/example.toml")))
	f.Add(overridesPolicy)
	f.Add("rules = [\n { name = \"a\", match = { \"x.y\" = \"1\" } },\n]\n[causes.operator]\nwait = '''\n5m'''\n")
	f.Add("[[rules]]\nname = \"a\"\n[rules.match]\n'k' = \"v\"\n[[rules]]\nname=\"b\"\nwindow=\"Sat,Sun 22:00-04:00 UTC\"\n")
	f.Add("a = [[[[1]]]]\n\"\\u0041\" = \"\"\"\n[[rules]]\n\"\"\"\n")
	f.Fuzz(func(t *testing.T, src string) {
		p, err := policy.Parse("f.toml", []byte(src))
		if err != nil {
			if strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			return
		}
		again, err := policy.Parse("f.toml", []byte(src))
		if err != nil || again.Version() != p.Version() {
			t.Fatalf("second parse: %v, version %s vs %s", err, again.Version(), p.Version())
		}
		m := policy.Machine{App: "acme-x", Region: "iad", Labels: map[string]string{"tier": "vip"}, Deferrals: 1}
		for _, c := range policy.Causes() {
			d := p.Decide(c, m, utc("2026-11-01T06:30:00Z"))
			if d.Wait < policy.MinWait || d.Wait > policy.MaxWait || (d.OnDeadline != policy.Force && d.OnDeadline != policy.Defer) {
				t.Fatalf("decision out of bounds: %+v", d)
			}
		}
	})
}

// FuzzParseWindow: no input panics, errors are one line, and a window that
// parses round-trips through its canonical text and opens when Next says.
func FuzzParseWindow(f *testing.F) {
	for _, s := range []string{
		"Mon-Fri 02:00-05:00 America/New_York", "Sat,Sun 22:00-04:00 UTC", "daily 01:00-03:00 Europe/Berlin",
		"02:00-02:30 America/New_York", "Fri-Mon 23:00-24:00 Pacific/Apia", "always", "Mon 24:00-01:00 UTC", "",
	} {
		f.Add(s, int64(1772953200)) // 2026-03-08T07:00:00Z
	}
	f.Fuzz(func(t *testing.T, s string, unix int64) {
		w, err := policy.ParseWindow(s)
		if err != nil {
			if strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			return
		}
		again, err := policy.ParseWindow(w.String())
		if err != nil || again != w {
			t.Fatalf("%q → %q does not round-trip: %v", s, w.String(), err)
		}
		at := time.Unix(unix%(1<<33), 0) // years 1697..2242
		n := w.Next(at)
		if n.Before(at) || !w.Contains(n) {
			t.Fatalf("%q: Next(%v) = %v is not open", w, at, n)
		}
		if e := w.End(n); !e.IsZero() && (!e.After(n) || w.Contains(e)) {
			t.Fatalf("%q: End(%v) = %v is not a close", w, n, e)
		}
	})
}

func readFileF(f *testing.F, name string) []byte {
	b, err := os.ReadFile(name)
	if err != nil {
		f.Fatal(err)
	}
	return b
}
