package policy_test

import (
	"strings"
	"testing"

	"github.com/hermes-cloud/migrator/policy"
)

// The customer lane: by default env-edit and profile-change take 1% of the
// fleet, at least 5 at once; a file may change its share, minimum and
// causes, never give it a fleet cause; the default keeps the version.
func TestBudgetLane(t *testing.T) {
	def := policy.Default().Lane()
	for _, tc := range []struct {
		fleet, want int
	}{{0, 5}, {100, 5}, {499, 5}, {501, 6}, {2000, 20}, {10000, 100}} {
		if got := def.Cap(tc.fleet); got != tc.want {
			t.Errorf("default cap of a fleet of %d: %d, want %d", tc.fleet, got, tc.want)
		}
	}
	for _, c := range policy.Causes() {
		want := c == policy.EnvEdit || c == policy.ProfileChange
		if def.InLane(c) != want {
			t.Errorf("default lane takes %s: %t, want %t", c, def.InLane(c), want)
		}
	}
	same := mustParse(t, "[budget_lane]\ncauses = [\"env-edit\", \"profile-change\"]\nshare = \"1%\"\nmin = 5\n")
	if same.Version() != policy.Default().Version() {
		t.Errorf("a file restating the default lane changed the version: %s vs %s", same.Version(), policy.Default().Version())
	}
	p := mustParse(t, "[budget_lane]\ncauses = [\"env-edit\"]\nshare = \"2.5%\"\nmin = 2\n")
	l := p.Lane()
	if l.Cap(1000) != 25 || l.Cap(10) != 2 || l.InLane(policy.ProfileChange) || !l.InLane(policy.EnvEdit) {
		t.Errorf("lane %+v: cap(1000) %d, cap(10) %d", l, l.Cap(1000), l.Cap(10))
	}
	if p.Version() == policy.Default().Version() {
		t.Error("a changed lane kept the default version")
	}
	if s := l.String(); s != "env-edit: 2.5% of the fleet, at least 2" {
		t.Errorf("String: %q", s)
	}
	if none := mustParse(t, "[budget_lane]\ncauses = []\n").Lane(); none.InLane(policy.EnvEdit) || none.String() != "no customer lane" {
		t.Errorf("empty causes: %+v", none)
	}
	for _, tc := range []struct{ in, want string }{
		{"[budget_lane]\ncauses = [\"auto-update\"]\n", `p.toml:2: budget_lane: causes: auto-update is a fleet cause: only env-edit and profile-change take the customer lane`},
		{"[budget_lane]\ncauses = [\"operator\"]\n", `p.toml:2: budget_lane: causes: operator is a fleet cause`},
		{"[budget_lane]\nshare = \"0%\"\n", `p.toml:2: budget_lane: share: "0%": want a percentage above 0% and at most 100%`},
		{"[budget_lane]\nshare = \"5\"\n", `p.toml:2: budget_lane: share: "5": want a percentage`},
		{"[budget_lane]\nshare = 5\n", `p.toml:2: budget_lane: share: want a percentage such as "1%", got an integer`},
		{"[budget_lane]\nmin = 0\n", `p.toml:2: budget_lane: min: 0: want 1 to 10000`},
		{"[budget_lane]\nsize = 3\n", `p.toml:2: budget_lane: size: unknown key (want causes, share, min)`},
		{"budget_lane = 3\n", `p.toml:1: budget_lane must be a table`},
	} {
		_, err := policy.Parse("p.toml", []byte(tc.in))
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.in, err, tc.want)
		}
	}
}
