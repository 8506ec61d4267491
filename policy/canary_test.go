package policy_test

import (
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/policy"
)

// canary_bake per cause (defaults: new images 10m, configuration changes
// 5m, an operator none) and per rule; a rule's 0 switches the bake off.
func TestDecideCanaryBake(t *testing.T) {
	now := utc("2026-03-08T07:30:00Z")
	m := policy.Machine{App: "hermes-agent-1", MachineID: "m1", Region: "iad", Labels: map[string]string{"tier": "vip"}}
	def := policy.Default()
	file := mustParse(t, `
[causes.operator]
canary_bake = "2m"
[causes.env-edit]
canary_bake = "0s"
[[rules]]
name = "vip"
match = { tier = "vip" }
causes = ["image-migration"]
canary_bake = "30m"
[[rules]]
name = "quick"
app_prefix = "hermes-"
causes = ["auto-update"]
canary_bake = "0s"
`)
	for _, tc := range []struct {
		name  string
		p     *policy.Policy
		cause policy.Cause
		want  time.Duration
	}{
		{"default auto-update", def, policy.AutoUpdate, 10 * time.Minute},
		{"default image-migration", def, policy.ImageMigration, 10 * time.Minute},
		{"default env-edit", def, policy.EnvEdit, 5 * time.Minute},
		{"default profile-change", def, policy.ProfileChange, 5 * time.Minute},
		{"default operator", def, policy.Operator, 0},
		{"cause setting", file, policy.Operator, 2 * time.Minute},
		{"cause setting 0", file, policy.EnvEdit, 0},
		{"rule", file, policy.ImageMigration, 30 * time.Minute},
		{"rule sets 0", file, policy.AutoUpdate, 0},
		{"no rule matches: the cause's default", file, policy.ProfileChange, 5 * time.Minute},
	} {
		if got := tc.p.Decide(tc.cause, m, now).CanaryBake; got != tc.want {
			t.Errorf("%s: canary bake %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestCanaryBakeParseAndVersion(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"[causes.operator]\ncanary_bake = 5", `causes.operator: canary_bake: want a duration such as "10m" ("0s": no bake), got an integer`},
		{"[causes.operator]\ncanary_bake = \"soon\"", `"soon" is not a duration`},
		{"[causes.operator]\ncanary_bake = \"-1m\"", `"-1m": want 0s or more`},
		{"[causes.operator]\ncanary_bake = \"25h\"", `"25h": want at most 24h0m0s`},
	} {
		_, err := policy.Parse("p.toml", []byte(tc.src))
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: err %v, want one line with %q", tc.src, err, tc.want)
		}
	}
	restated := mustParse(t, "[causes.auto-update]\ncanary_bake = \"600s\"\n[causes.operator]\ncanary_bake = \"0s\"")
	if restated.Version() != policy.Default().Version() {
		t.Error("restating the default bakes changed the version")
	}
	if mustParse(t, "[causes.auto-update]\ncanary_bake = \"11m\"").Version() == policy.Default().Version() {
		t.Error("another bake kept the version")
	}
	inherit := mustParse(t, "[[rules]]\nname = \"r\"\napp_prefix = \"x\"\nquiet = true")
	zero := mustParse(t, "[[rules]]\nname = \"r\"\napp_prefix = \"x\"\nquiet = true\ncanary_bake = \"0s\"")
	if inherit.Version() == zero.Version() {
		t.Error("a rule that sets canary_bake 0 has the version of one that inherits it")
	}
}
