package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/policy"
)

const fullConfig = `# every table
[policy.causes.auto-update]
wait = "45m"

[[policy.rules]]
name = "vip"
match = { tier = "vip" }
wait = "2h"

[auto_update]
enabled = true
schedule = "CRON_TZ=America/New_York 0 3 * * 1-5"
channel = "stable"
max_unavailable = 5
canary = 1
failure_threshold = 2
pin = false

[auto_update.selector]
org = "hermes"
app_prefix = "hermes-agent-"
labels = { hermes_auto_update = "true" }

[fleet]
cap = 40

[worker]
workers = 8
poll_interval = "3s"
`

func TestParseConfigFull(t *testing.T) {
	fc, err := parseConfig("m.toml", []byte(fullConfig))
	if err != nil {
		t.Fatal(err)
	}
	if fc.policy == nil || fc.policy.Settings(policy.AutoUpdate).Wait != 45*time.Minute || len(fc.policy.Rules()) != 1 {
		t.Fatalf("policy %+v", fc.policy)
	}
	if *fc.fleetCap != 40 || *fc.workers != 8 || *fc.pollInterval != 3*time.Second {
		t.Fatalf("fleet/worker: %d %d %s", *fc.fleetCap, *fc.workers, *fc.pollInterval)
	}
	au := fc.autoUpdate
	if !fc.autoUpdateOn || au.channel != "stable" || au.maxUnavailable != "5" || au.canary != 1 || au.failureThreshold != 2 || au.pin ||
		au.selector.Org != "hermes" || au.selector.AppPrefix != "hermes-agent-" || au.selector.Labels["hermes_auto_update"] != "true" {
		t.Fatalf("auto_update %+v", au)
	}
	// 03:00 in New York on weekdays, whatever the host's zone.
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	from := time.Date(2026, 3, 6, 12, 0, 0, 0, ny) // a Friday
	if got, want := au.schedule.Next(from), time.Date(2026, 3, 9, 3, 0, 0, 0, ny); !got.Equal(want) {
		t.Fatalf("next tick %s, want %s", got, want)
	}
	// Without CRON_TZ the schedule is in UTC, not the host's zone.
	fc, err = parseConfig("m.toml", []byte("[auto_update]\nschedule = \"30 4 * * *\"\nchannel = \"c\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := fc.autoUpdate.schedule.Next(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)); !got.Equal(time.Date(2026, 1, 1, 4, 30, 0, 0, time.UTC)) {
		t.Fatalf("next tick %s, want 04:30 UTC", got)
	}
	if !fc.autoUpdate.pin || fc.autoUpdate.maxUnavailable != "1" {
		t.Fatalf("defaults: %+v", fc.autoUpdate)
	}
}

// Every problem is one line naming the file and the line of the key.
func TestParseConfigErrors(t *testing.T) {
	cases := []struct {
		name, doc, want string
	}{
		{"syntax", "[fleet]\ncap = = 1\n", "c.toml:2: "},
		{"unknown table", "[fleet]\ncap = 1\n\n[wroker]\nworkers = 2\n", `c.toml:4: unknown key wroker (known: policy, auto_update, fleet, worker, notify)`},
		{"unknown top key", "verbose = true\n", `c.toml:1: unknown key verbose`},
		{"unknown fleet key", "[fleet]\n\ncapacity = 3\n", `c.toml:3: unknown key fleet.capacity (known: cap)`},
		{"unknown auto_update key", "[auto_update]\nschedule = \"@daily\"\nchanel = \"x\"\n", `c.toml:3: unknown key auto_update.chanel`},
		{"unknown selector key", "[auto_update]\nschedule = \"@daily\"\nchannel = \"x\"\nselector = { org = \"o\", label = { a = \"b\" } }\n",
			`c.toml:4: unknown key auto_update.selector.label (known: org, app_prefix, labels)`},
		{"dotted unknown", "auto_update.schedule = \"@daily\"\nauto_update.channel = \"x\"\nauto_update.selector.apps = 3\n",
			`c.toml:3: unknown key auto_update.selector.apps`},
		{"table not a table", "fleet = 3\n", `c.toml:1: fleet: want a table, got integer 3`},
		{"bad cron", "[auto_update]\nchannel = \"s\"\nschedule = \"61 * * * *\"\n", `c.toml:3: auto_update.schedule: "61 * * * *": `},
		{"cron zone alone", "[auto_update]\nschedule = \"CRON_TZ=UTC\"\n", `c.toml:2: auto_update.schedule: "CRON_TZ=UTC": want "CRON_TZ=Zone" followed by a schedule`},
		{"bad zone", "[auto_update]\nschedule = \"CRON_TZ=Mars/Olympus 0 3 * * *\"\n", `c.toml:2: auto_update.schedule: "CRON_TZ=Mars/Olympus 0 3 * * *": provided bad location`},
		{"never fires", "[auto_update]\nschedule = \"0 0 30 2 *\"\n", `c.toml:2: auto_update.schedule: "0 0 30 2 *" never fires`},
		{"schedule type", "[auto_update]\nschedule = 5\n", `c.toml:2: auto_update.schedule: want a string, got integer 5`},
		{"no schedule", "\n[auto_update]\nchannel = \"s\"\n", `c.toml:2: auto_update: schedule is required`},
		{"no channel", "[auto_update]\nschedule = \"@hourly\"\n", `c.toml:1: auto_update: channel is required`},
		{"bad channel", "[auto_update]\nschedule = \"@hourly\"\nchannel = \"a b\"\n", `c.toml:3: auto_update.channel: "a b" is not a channel name`},
		{"bad max unavailable", "[auto_update]\nmax_unavailable = \"150%\"\n", `c.toml:2: auto_update.max_unavailable: max unavailable "150%"`},
		{"zero max unavailable", "[auto_update]\nmax_unavailable = 0\n", `c.toml:2: auto_update.max_unavailable: max unavailable "0"`},
		{"max unavailable type", "[auto_update]\nmax_unavailable = true\n", `c.toml:2: auto_update.max_unavailable: want a count like 5 or a percentage like "10%", got boolean true`},
		{"negative canary", "[auto_update]\ncanary = -1\n", `c.toml:2: auto_update.canary: want a whole number from 0 to 1000000, got integer -1`},
		{"enabled type", "[auto_update]\nenabled = \"yes\"\n", `c.toml:2: auto_update.enabled: want true or false, got "yes"`},
		{"label value type", "[auto_update]\nselector.labels.tier = 1\n", `c.toml:2: auto_update.selector.labels.tier: want a string, got integer 1`},
		{"labels type", "[auto_update.selector]\nlabels = [\"a\"]\n", `c.toml:2: auto_update.selector.labels: want a table`},
		{"fleet cap", "[fleet]\ncap = -1\n", `c.toml:2: fleet.cap: want a whole number from 0 to 1000000, got integer -1`},
		{"workers zero", "[worker]\nworkers = 0\n", `c.toml:2: worker.workers: want a whole number from 1 to 1000000, got integer 0`},
		{"poll interval", "[worker]\npoll_interval = \"soon\"\n", `c.toml:2: worker.poll_interval: want a duration from 1ms to 1h like "5s", got "soon"`},
		{"policy error keeps its line", "[fleet]\ncap = 1\n[policy.causes.auto-update]\nwait = \"300h\"\n", `c.toml:4: `},
		{"policy unknown key", "[policy]\nrulez = []\n", `c.toml:2: `},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig("c.toml", []byte(tc.doc))
			if err == nil {
				t.Fatalf("accepted:\n%s", tc.doc)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, tc.want) || strings.Contains(msg, "\n") {
				t.Fatalf("error %q, want one line starting %q", msg, tc.want)
			}
		})
	}
	// A disabled auto-update needs neither schedule nor channel.
	fc, err := parseConfig("c.toml", []byte("[auto_update]\nenabled = false\n"))
	if err != nil || fc.autoUpdateOn {
		t.Fatalf("disabled auto-update: %+v, %v", fc, err)
	}
}

func envOf(vars map[string]string) *env {
	return &env{getenv: func(k string) string { return vars[k] }}
}

// Precedence: environment over file over defaults; the policy from one
// place only; the selector's org filled from MIGRATOR_FLY_ORG.
func TestLoadSettingsPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "m.toml")
	if err := os.WriteFile(file, []byte(fullConfig+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := loadSettings(envOf(map[string]string{configFileEnv: file}))
	if err != nil {
		t.Fatal(err)
	}
	if s.configFile != file || s.fleetCap != 40 || s.workers != 8 || s.pollInterval != 3*time.Second ||
		s.policySource != file+" [policy]" || s.autoUpdate == nil || s.autoUpdate.selector.Org != "hermes" {
		t.Fatalf("from the file: %+v", s)
	}
	s, err = loadSettings(envOf(map[string]string{configFileEnv: file, fleetCapEnv: "7", workersEnv: "3", pollIntervalEnv: "1s", flyOrgEnv: "other"}))
	if err != nil {
		t.Fatal(err)
	}
	if s.fleetCap != 7 || s.workers != 3 || s.pollInterval != time.Second || s.autoUpdate.selector.Org != "hermes" {
		t.Fatalf("environment over the file: %+v", s)
	}
	s, err = loadSettings(envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	if s.configFile != "" || s.fleetCap != defaultFleetCap || s.workers != defaultWorkers || s.pollInterval != 5*time.Second ||
		s.policy.Version() != policy.Default().Version() || s.autoUpdate != nil {
		t.Fatalf("defaults: %+v", s)
	}

	polFile := filepath.Join(dir, "policy.toml")
	if err := os.WriteFile(polFile, []byte("[causes.operator]\nwait = \"20m\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = loadSettings(envOf(map[string]string{configFileEnv: file, policyFileEnv: polFile}))
	if err == nil || !strings.Contains(err.Error(), "both set a policy") {
		t.Fatalf("policy twice: %v", err)
	}
	noPolicy := filepath.Join(dir, "nopolicy.toml")
	if err := os.WriteFile(noPolicy, []byte("[auto_update]\nschedule = \"@daily\"\nchannel = \"stable\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = loadSettings(envOf(map[string]string{configFileEnv: noPolicy, policyFileEnv: polFile, flyOrgEnv: "hermes"}))
	if err != nil {
		t.Fatal(err)
	}
	if s.policySource != polFile || s.policy.Settings(policy.Operator).Wait != 20*time.Minute || s.autoUpdate.selector.Org != "hermes" {
		t.Fatalf("policy file and org from the environment: %+v", s)
	}
	// Without an org, only serve refuses (other commands do not tick).
	s, err = loadSettings(envOf(map[string]string{configFileEnv: noPolicy}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.autoUpdate.config(noPolicy, nil); err == nil || err.Error() != noPolicy+": [auto_update.selector] has no org and MIGRATOR_FLY_ORG is not set" {
		t.Fatalf("no org: %v", err)
	}
	_, err = loadSettings(envOf(map[string]string{configFileEnv: file, fleetCapEnv: "many"}))
	if err == nil || !strings.Contains(err.Error(), "MIGRATOR_FLEET_CAP") {
		t.Fatalf("bad env value: %v", err)
	}
}

// Without MIGRATOR_CONFIG, ./migrator.toml is read when it exists.
func TestLoadSettingsDefaultFile(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	s, err := loadSettings(envOf(nil))
	if err != nil || s.configFile != "" {
		t.Fatalf("no file: %+v, %v", s, err)
	}
	if err := os.WriteFile(filepath.Join(dir, defaultConfigFile), []byte("[fleet]\ncap = 9\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = loadSettings(envOf(nil))
	if err != nil || s.configFile != defaultConfigFile || s.fleetCap != 9 {
		t.Fatalf("./migrator.toml: %+v, %v", s, err)
	}
}

func TestKeyLine(t *testing.T) {
	doc := []byte("a = 1\n[b]\nc = 2\nd = { e = 3,\n  f = 4 }\n[b.g]\nh = \"x\"\n")
	for _, tc := range []struct {
		path []string
		line int
	}{
		{[]string{"a"}, 1}, {[]string{"b"}, 2}, {[]string{"b", "c"}, 3}, {[]string{"b", "d"}, 4},
		{[]string{"b", "d", "f"}, 5}, {[]string{"b", "g", "h"}, 7}, {[]string{"zz"}, 0}, {nil, 0},
	} {
		if got := keyLine(doc, tc.path); got != tc.line {
			t.Errorf("keyLine(%v) = %d, want %d", tc.path, got, tc.line)
		}
	}
}
