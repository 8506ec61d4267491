package policy_test

import (
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/policy"
)

// TestDecideUndrainable: the setting per cause and per rule, default fail.
func TestDecideUndrainable(t *testing.T) {
	p := mustParse(t, `
[causes.image-migration]
undrainable = "recreate"

[[rules]]
name = "legacy-fleet"
match = { hermes_legacy = "true" }
undrainable = "recreate"

[[rules]]
name = "vip"
match = { tier = "vip" }
causes = ["image-migration"]
undrainable = "fail"
`)
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		cause  policy.Cause
		labels map[string]string
		want   policy.Undrainable
	}{
		{"default is fail", policy.AutoUpdate, nil, policy.UndrainableFail},
		{"operator default", policy.Operator, nil, policy.UndrainableFail},
		{"cause setting", policy.ImageMigration, nil, policy.UndrainableRecreate},
		{"rule sets recreate", policy.AutoUpdate, map[string]string{"hermes_legacy": "true"}, policy.UndrainableRecreate},
		{"rule overrides the cause back to fail", policy.ImageMigration, map[string]string{"tier": "vip"}, policy.UndrainableFail},
		{"rule without the setting inherits", policy.Operator, map[string]string{"tier": "vip"}, policy.UndrainableFail},
	} {
		d := p.Decide(tc.cause, policy.Machine{App: "a", Labels: tc.labels}, now)
		if d.Undrainable != tc.want {
			t.Errorf("%s: undrainable %q, want %q (rule %s)", tc.name, d.Undrainable, tc.want, d.Rule)
		}
	}
	if got := policy.Default().Decide(policy.Operator, policy.Machine{App: "a"}, now).Undrainable; got != policy.UndrainableFail {
		t.Errorf("built-in default: %q, want fail", got)
	}
}

func TestUndrainableParseAndVersion(t *testing.T) {
	_, err := policy.Parse("p.toml", []byte("[causes.operator]\nundrainable = \"blind\"\n"))
	if err == nil || !strings.Contains(err.Error(), `p.toml:2: causes.operator: undrainable: "blind": want "fail" or "recreate"`) {
		t.Errorf("bad value: %v", err)
	}
	// Restating the default keeps the default version; changing it does not.
	same := mustParse(t, "[causes.operator]\nundrainable = \"fail\"\n")
	if same.Version() != policy.Default().Version() {
		t.Errorf("undrainable = fail changed the version: %s vs %s", same.Version(), policy.Default().Version())
	}
	diff := mustParse(t, "[causes.operator]\nundrainable = \"recreate\"\n")
	if diff.Version() == policy.Default().Version() {
		t.Error("undrainable = recreate kept the default version")
	}
	if _, err := policy.ParseUndrainable("recreate"); err != nil {
		t.Error(err)
	}
	if _, err := policy.ParseUndrainable("RECREATE"); err == nil {
		t.Error("ParseUndrainable accepted RECREATE")
	}
}
