package hermes

import (
	"slices"
	"strings"
	"testing"
)

func TestDefaultTableFromTheReleases(t *testing.T) {
	// The first release after each PR merged (see doc.go for the sources).
	want := map[Feature]string{
		DrainRoute: "0.18.0", QuietFlag: "0.18.0", BootSelfHeal: "0.18.0", CountsCron: "0.19.0",
		SelfSuspend: "0.20.1", MarkerExpiry: "0.20.2", Idle2m: "0.20.6",
	}
	d := Default()
	for f, v := range want {
		if got := d.Min(f); got != v {
			t.Errorf("Min(%s) = %q, want %q", f, got, v)
		}
	}
	if len(Features()) != len(want) {
		t.Errorf("%d features, want %d", len(Features()), len(want))
	}
	var zero Table
	if zero.Min(CountsCron) != "0.19.0" {
		t.Errorf("the zero Table is not the default: %q", zero.Min(CountsCron))
	}
}

func TestHas(t *testing.T) {
	d := Default()
	for _, tc := range []struct {
		version string
		f       Feature
		want    Support
	}{
		{"0.17.0", QuietFlag, Lacks},
		{"0.18.0", QuietFlag, Has},
		{"v0.18.2", BootSelfHeal, Has},
		{"0.18.2", CountsCron, Lacks},
		{"0.19.0", CountsCron, Has},
		{"0.20.1", MarkerExpiry, Lacks},
		{"0.21.5", Idle2m, Has},
		{"0.19.0rc1", CountsCron, Lacks}, // a pre-release sorts before the release
		{"", QuietFlag, Unknown},
		{"unknown", QuietFlag, Unknown},
		{"dev", BootSelfHeal, Unknown},
	} {
		if got := d.Has(tc.version, tc.f); got != tc.want {
			t.Errorf("Has(%q, %s) = %d, want %d", tc.version, tc.f, got, tc.want)
		}
	}
}

func TestLacks(t *testing.T) {
	d := Default()
	if got := d.LackNames("0.17.0"); !slices.Equal(got, []string{"drain_route", "quiet_flag", "boot_self_heal", "counts_cron",
		"self_suspend", "marker_expiry", "idle_2m"}) {
		t.Errorf("0.17.0 lacks %v", got)
	}
	if got := d.LackNames("0.18.2"); !slices.Equal(got, []string{"counts_cron", "self_suspend", "marker_expiry", "idle_2m"}) {
		t.Errorf("0.18.2 lacks %v", got)
	}
	if got := d.LackNames("0.21.0"); got != nil {
		t.Errorf("0.21.0 lacks %v", got)
	}
	if got := d.LackNames(""); got != nil {
		t.Errorf("an unknown version lacks %v (it must say nothing)", got)
	}
	l := d.Lacks("0.18.0")[0]
	if s := l.String(); s != "counts_cron (since 0.19.0, hermes-agent #63891)" {
		t.Errorf("Lack.String() = %q", s)
	}
}

func TestParse(t *testing.T) {
	tab, err := Parse(" quiet_flag=0.18.1 , counts_cron=v0.19.2")
	if err != nil {
		t.Fatal(err)
	}
	if tab.Min(QuietFlag) != "0.18.1" || tab.Min(CountsCron) != "v0.19.2" || tab.Min(BootSelfHeal) != "0.18.0" {
		t.Errorf("parsed %s", tab)
	}
	if tab.Has("0.18.0", QuietFlag) != Lacks {
		t.Error("override not applied")
	}
	if Default().Has("0.18.0", QuietFlag) != Has {
		t.Error("With changed the default table")
	}
	if empty, err := Parse("  "); err != nil || empty.String() != Default().String() {
		t.Errorf("empty = %v, %v", empty, err)
	}
	again, err := Parse(tab.String())
	if err != nil || again.String() != tab.String() {
		t.Errorf("String does not parse back: %v, %v", again, err)
	}
	for _, bad := range []string{"quiet_flag", "quiet=0.18.0", "quiet_flag=soon", "quiet_flag=0.18.0,quiet_flag=0.19.0"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		} else if strings.Contains(err.Error(), "\n") && !strings.Contains(bad, ",") {
			t.Errorf("Parse(%q): error is not one line: %q", bad, err)
		}
	}
}
