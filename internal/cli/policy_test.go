package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/policy"
)

// runPolicyCLI runs the CLI in-process with only the given environment.
func runPolicyCLI(t *testing.T, environ map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	e := &env{getenv: func(k string) string { return environ[k] }, stdout: &out, stderr: &errb}
	code = run(ctx, e, args)
	return code, out.String(), errb.String()
}

func writePolicyFile(t *testing.T, name, src string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

const examplePolicy = "../../policy/testdata/example.toml"

func TestPolicyCheck(t *testing.T) {
	data, err := os.ReadFile(examplePolicy)
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Parse(examplePolicy, data)
	if err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runPolicyCLI(t, nil, "policy", "check", examplePolicy)
	if want := "ok: 3 rules, version " + p.Version() + "\n"; code != 0 || out != want || errOut != "" {
		t.Errorf("check example: code %d, stdout %q (want %q), stderr %q", code, out, want, errOut)
	}

	one := writePolicyFile(t, "one.toml", "[[rules]]\nname = \"vip\"\nmatch = { tier = \"vip\" }\nquiet = false\n")
	if code, out, _ := runPolicyCLI(t, nil, "policy", "check", one); code != 0 || !strings.HasPrefix(out, "ok: 1 rule, version ") {
		t.Errorf("one rule: code %d, %q", code, out)
	}
	empty := writePolicyFile(t, "empty.toml", "# nothing yet\n")
	if code, out, _ := runPolicyCLI(t, nil, "policy", "check", empty); code != 0 || out != "ok: 0 rules, version "+policy.Default().Version()+"\n" {
		t.Errorf("empty: code %d, %q", code, out)
	}
}

func TestPolicyCheckErrors(t *testing.T) {
	bad := writePolicyFile(t, "bad.toml", "[causes.auto-update]\nwait = \"45m\"\non_deadline = \"later\"\n")
	missing := filepath.Join(t.TempDir(), "nope.toml")
	cases := []struct {
		name string
		args []string
		want string // stderr
	}{
		{"bad value", []string{"policy", "check", bad},
			"migrator: " + bad + `:3: causes.auto-update: on_deadline: "later": want "force" or "defer"` + "\n"},
		{"missing file", []string{"policy", "check", missing},
			"migrator: policy file: open " + missing + ": no such file or directory\n"},
		{"no file argument", []string{"policy", "check"},
			"migrator: migrator policy check: accepts 1 arg(s), received 0\n"},
		{"unknown subcommand", []string{"policy", "lint", bad},
			"migrator: migrator policy: unknown command \"lint\" for \"migrator policy\"\n"},
	}
	for _, c := range cases {
		code, out, errOut := runPolicyCLI(t, nil, c.args...)
		if code != exitUsage || out != "" || errOut != c.want {
			t.Errorf("%s: code %d, stdout %q, stderr %q; want exit 2 and %q", c.name, code, out, errOut, c.want)
		}
	}
}

func TestPolicyCheckTable(t *testing.T) {
	cfg := writePolicyFile(t, "migrator.toml", `schedule = "*/30 * * * *"

[policy.causes.operator]
wait = "20m"

[[policy.rules]]
name = "vip"
match = { tier = "vip" }
wait = "never"
`)
	code, _, errOut := runPolicyCLI(t, nil, "policy", "check", "--table", "policy", cfg)
	if want := "migrator: " + cfg + `:9: rule "vip": wait: "never" is not a duration (want e.g. "45m" or "1h30m")` + "\n"; code != exitUsage || errOut != want {
		t.Errorf("code %d, stderr %q, want %q", code, errOut, want)
	}
	good := writePolicyFile(t, "good.toml", "schedule = \"@daily\"\n[policy.causes.operator]\nwait = \"20m\"\n")
	if code, out, _ := runPolicyCLI(t, nil, "policy", "check", "--table", "policy", good); code != 0 || !strings.HasPrefix(out, "ok: 0 rules, version ") {
		t.Errorf("good: code %d, %q", code, out)
	}
	if code, _, errOut := runPolicyCLI(t, nil, "policy", "check", "--table", "policies", good); code != exitUsage || !strings.Contains(errOut, "no [policies] table") {
		t.Errorf("absent table: code %d, %q", code, errOut)
	}
	// Without --table, the config file's other keys are unknown to the policy.
	if code, _, errOut := runPolicyCLI(t, nil, "policy", "check", good); code != exitUsage || !strings.Contains(errOut, `:1: unknown key "schedule"`) {
		t.Errorf("whole file: code %d, %q", code, errOut)
	}
}

func TestPolicyExplainDefaults(t *testing.T) {
	code, out, errOut := runPolicyCLI(t, nil, "policy", "explain", "--cause", "auto-update", "--app", "acme-agent",
		"--machine", "m1", "--deferrals", "3", "--at", "2026-03-08T07:30:00Z")
	if code != 0 || errOut != "" {
		t.Fatalf("code %d, stderr %q", code, errOut)
	}
	for _, want := range []string{
		"policy:       built-in defaults (version " + policy.Default().Version() + ")",
		"machine:      acme-agent/m1 (3 deferrals so far)",
		"rule:         default:auto-update (max deferrals reached) (no rule matched: the cause's settings)",
		"quiet:        yes (no home-channel broadcast)",
		"idle wait:    none (all deferrals used: drain at once)",
		"wait:         30m0s",
		"deadline:     2026-03-08T08:00:00Z",
		"on deadline:  force (all 3 deferrals used)",
		"window:       always",
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestPolicyExplainWithFile(t *testing.T) {
	args := []string{"policy", "explain", "--cause", "auto-update", "--app", "acme-agent", "--region", "iad",
		"--label", "tier=vip", "--label", "plan=pro", "--deferrals", "1", "--at", "2026-03-09T12:00:00Z", "--policy", examplePolicy}
	code, out, errOut := runPolicyCLI(t, nil, args...)
	if code != 0 || errOut != "" {
		t.Fatalf("code %d, stderr %q", code, errOut)
	}
	for _, want := range []string{
		"rule:         vip (line 18: causes=[auto-update,image-migration] match={tier=vip})",
		"quiet:        no (the gateway announces the restart on the home channel)",
		"idle wait:    30m0s (begin only when the agent has no work in flight; if it never has: defer, never drained)",
		"wait:         2h0m0s",
		"on deadline:  defer (1 of 5 deferrals used; then force)",
		// Monday noon UTC: the weekend-night window is closed until Saturday.
		"window:       Sat,Sun 22:00-04:00 UTC: closed, opens 2026-03-14T22:00:00Z",
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	// The canary rule comes after vip and eu-night: both are listed as skipped.
	code, out, _ = runPolicyCLI(t, nil, "policy", "explain", "--cause", "auto-update", "--app", "hermes-canary-3",
		"--region", "fra", "--at", "2026-03-11T02:30:00Z", "--policy", examplePolicy, "--json")
	if code != 0 {
		t.Fatalf("code %d", code)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	want := map[string]any{
		"rule": "eu-night", "quiet": true, "wait": "45m0s", "wait_seconds": 2700.0, "on_deadline": "defer",
		"max_deferrals": 5.0, "in_window": true, "window": "daily 01:00-04:00 Europe/Berlin",
		"window_end": "2026-03-11T03:00:00Z", "deadline": "2026-03-11T03:15:00Z", "cause": "auto-update",
		"app": "hermes-canary-3", "region": "fra", "at": "2026-03-11T02:30:00Z", "policy": examplePolicy,
		"idle_wait": "30m0s", "idle_wait_seconds": 1800.0, "on_busy": "defer",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("json %s = %#v, want %#v", k, got[k], v)
		}
	}
	if mr, _ := got["matched_rule"].(map[string]any); mr["name"] != "eu-night" || mr["line"] != 27.0 {
		t.Errorf("matched_rule = %#v", got["matched_rule"])
	}
	if sk, _ := got["skipped"].([]any); len(sk) != 1 {
		t.Errorf("skipped = %#v", got["skipped"])
	}
	if _, ok := got["next_window"]; ok {
		t.Errorf("next_window present while in the window")
	}
}

func TestPolicyExplainUsesServePolicy(t *testing.T) {
	file := writePolicyFile(t, "p.toml", "[causes.operator]\nwait = \"25m\"\n")
	code, out, errOut := runPolicyCLI(t, map[string]string{policyFileEnv: file}, "policy", "explain",
		"--cause", "operator", "--app", "a", "--at", "2026-03-08T07:30:00Z", "--json")
	if code != 0 || !strings.Contains(out, `"wait": "25m0s"`) || !strings.Contains(out, `"policy": "`+file+`"`) ||
		!strings.Contains(out, `"idle_wait": "0s"`) {
		t.Errorf("code %d, stderr %q, out:\n%s", code, errOut, out)
	}
}

func TestPolicyExplainBadInput(t *testing.T) {
	bad := writePolicyFile(t, "bad.toml", "[[rules]]\nname = \"x\"\nquiet = 1\n")
	base := []string{"policy", "explain", "--app", "a"}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no cause", []string{"policy", "explain", "--app", "a"},
			"migrator: policy explain: --cause is required (one of auto-update, image-migration, env-edit, profile-change, operator)\n"},
		{"unknown cause", append(base, "--cause", "cron"),
			`migrator: policy explain: --cause: unknown cause "cron" (valid: auto-update, image-migration, env-edit, profile-change, operator)` + "\n"},
		{"no app", []string{"policy", "explain", "--cause", "operator"},
			"migrator: policy explain: --app is required\n"},
		{"bad label", append(base, "--cause", "operator", "--label", "tier"),
			`migrator: policy explain: --label "tier": want KEY=VALUE` + "\n"},
		{"label twice", append(base, "--cause", "operator", "--label", "t=1", "--label", "t=2"),
			"migrator: policy explain: --label t given twice\n"},
		{"bad time", append(base, "--cause", "operator", "--at", "yesterday"),
			`migrator: policy explain: --at "yesterday": want RFC 3339, e.g. 2026-03-08T07:30:00Z` + "\n"},
		{"negative deferrals", append(base, "--cause", "operator", "--deferrals", "-1"),
			"migrator: policy explain: --deferrals -1: want 0 or more\n"},
		{"bad deferrals", append(base, "--cause", "operator", "--deferrals", "two"),
			`migrator: migrator policy explain: invalid argument "two" for "--deferrals" flag: strconv.ParseInt: parsing "two": invalid syntax` + "\n"},
		{"bad policy file", append(base, "--cause", "operator", "--policy", bad),
			"migrator: " + bad + `:3: rule "x": quiet: want true or false, got an integer` + "\n"},
		{"table without policy", append(base, "--cause", "operator", "--table", "policy"),
			"migrator: policy explain: --table needs --policy\n"},
		{"stray argument", append(base, "--cause", "operator", "extra"),
			`migrator: migrator policy explain: unknown command "extra" for "migrator policy explain"` + "\n"},
	}
	for _, c := range cases {
		code, out, errOut := runPolicyCLI(t, nil, c.args...)
		if code != exitUsage || out != "" || errOut != c.want {
			t.Errorf("%s: code %d, stdout %q\n got stderr %q\nwant exit 2, %q", c.name, code, out, errOut, c.want)
		}
	}
	// serve's policy is checked the same way: an invalid MIGRATOR_POLICY refuses.
	code, _, errOut := runPolicyCLI(t, map[string]string{policyFileEnv: bad}, "policy", "explain", "--cause", "operator", "--app", "a")
	if code != exitUsage || !strings.Contains(errOut, bad+":3:") {
		t.Errorf("bad MIGRATOR_POLICY: code %d, %q", code, errOut)
	}
}

func TestPolicyCommandsHaveExamples(t *testing.T) {
	root := newRoot(&env{getenv: func(string) string { return "" }, stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}})
	cmd, _, err := root.Find([]string{"policy"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range append(cmd.Commands(), cmd) {
		if strings.TrimSpace(c.Example) == "" {
			t.Errorf("%s has no Example", c.CommandPath())
		}
	}
}

func TestPolicyExplainUndrainable(t *testing.T) {
	file := writePolicyFile(t, "p.toml", "[[rules]]\nname = \"legacy\"\napp_prefix = \"old-\"\nundrainable = \"recreate\"\n")
	for app, want := range map[string]string{"old-1": "recreate (a drain endpoint answering 404/401 is moved without a drain",
		"new-1": "fail (a drain endpoint answering 404/401 fails"} {
		code, out, errOut := runPolicyCLI(t, map[string]string{policyFileEnv: file}, "policy", "explain",
			"--cause", "operator", "--app", app, "--at", "2026-03-08T07:30:00Z")
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("%s: code %d, stderr %q, out:\n%s", app, code, errOut, out)
		}
	}
	_, out, _ := runPolicyCLI(t, map[string]string{policyFileEnv: file}, "policy", "explain",
		"--cause", "operator", "--app", "old-2", "--json")
	if !strings.Contains(out, `"undrainable": "recreate"`) {
		t.Errorf("json: %s", out)
	}
}
