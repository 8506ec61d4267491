// Package prometheus holds migrator's alert rules (alerts.yml) and their
// unit tests (alerts_test.yml), run here with Prometheus's own promtool.
package prometheus

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/hermes-cloud/migrator/internal/metrics/metricstest"
)

// promtool finds Debian's promtool (package prometheus). Without it the
// test skips, except in CI (CI=true), where it fails: .ci/setup installs it.
func promtool(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("promtool"); err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("promtool not found, and CI=true: install it (.ci/setup does, with apt-get install prometheus)")
	}
	t.Skip("promtool not installed (apt-get install prometheus); CI=true makes this a failure")
	return ""
}

// The rules load and every unit test passes: each alert fires where it
// should and stays silent where it should not.
func TestAlertRules(t *testing.T) {
	bin := promtool(t)
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

var (
	alertRE  = regexp.MustCompile(`(?m)^\s+- alert: (\w+)$`)
	exprRE   = regexp.MustCompile(`(?ms)^\s+expr: (?:>-\n)?(.*?)\n\s+(?:for|labels):`)
	firesRE  = regexp.MustCompile(`(?m)^\s+alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels:`)
	silentRE = regexp.MustCompile(`(?m)^\s+alertname: (\w+)\n\s+exp_alerts: \[\]`)
)

// Each alert has a case that fires and one that stays silent, and reads
// only series serve exports.
func TestAlertRulesAreCoveredAndReadRealSeries(t *testing.T) {
	rules, err := os.ReadFile("alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile("alerts_test.yml")
	if err != nil {
		t.Fatal(err)
	}
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, m := range firesRE.FindAllStringSubmatch(string(tests), -1) {
		fires[m[1]] = true
	}
	for _, m := range silentRE.FindAllStringSubmatch(string(tests), -1) {
		silent[m[1]] = true
	}
	alerts := alertRE.FindAllStringSubmatch(string(rules), -1)
	exprs := exprRE.FindAllStringSubmatch(string(rules), -1)
	if len(alerts) < 6 || len(exprs) != len(alerts) {
		t.Fatalf("%d alerts and %d expressions parsed from alerts.yml", len(alerts), len(exprs))
	}
	exported, err := metricstest.Exported()
	if err != nil {
		t.Fatal(err)
	}
	for i, a := range alerts {
		name := a[1]
		if !fires[name] || !silent[name] {
			t.Errorf("%s: a case that fires %v, one that stays silent %v; want both", name, fires[name], silent[name])
		}
		if err := metricstest.Check(exported, name, exprs[i][1]); err != nil {
			t.Error(err)
		}
		if len(metricstest.MetricNames(exprs[i][1])) == 0 {
			t.Errorf("%s: no metric found in %q", name, exprs[i][1])
		}
	}
}

// runbookBase is where every alert's runbook_url points: the alert's
// section of docs/runbook.md, whose anchor is the alert's name in lower
// case (GitHub's anchor for a heading that is the name alone).
const runbookBase = "https://github.com/hermes-cloud/migrator/blob/main/docs/runbook.md#"

// Every alert carries a runbook_url annotation pointing at its own
// section of the runbook.
func TestEveryAlertHasItsRunbookURL(t *testing.T) {
	rules, err := os.ReadFile("alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile(`(?m)^\s+- alert: `).Split(string(rules), -1)[1:]
	if len(blocks) < 9 {
		t.Fatalf("%d alerts parsed from alerts.yml", len(blocks))
	}
	urlRE := regexp.MustCompile(`(?m)^\s+runbook_url: "([^"]*)"$`)
	for _, b := range blocks {
		name := strings.TrimSpace(strings.SplitN(b, "\n", 2)[0])
		m := urlRE.FindAllStringSubmatch(b, -1)
		if len(m) != 1 {
			t.Errorf("%s: %d runbook_url annotations, want 1", name, len(m))
			continue
		}
		if want := runbookBase + strings.ToLower(name); m[0][1] != want {
			t.Errorf("%s: runbook_url %q, want %q", name, m[0][1], want)
		}
	}
}
