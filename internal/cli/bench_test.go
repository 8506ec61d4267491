//go:build !release

package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/store/storetest"
)

func TestBenchUsage(t *testing.T) {
	for _, args := range [][]string{
		{"bench", "--machines", "0"},
		{"bench", "--budget", "-1"},
		{"bench", "--time-scale", "0"},
		{"bench", "--turn-sigma", "0"},
		{"bench", "--turns-at", "later"},
		{"bench", "--machines", "10", "--per-app", "3"},
		{"bench", "--drain-wait-machines", "-5"},
		{"bench", "--out", ""},
		{"bench", "--turn-persistence", "1.5"},
		{"bench", "--history-rounds", "-1"},
		{"bench", "--turns-at", "start"},
		{"bench", "extra"},
		{"bench", "--scenario", "fleet,bogus"},
		{"bench", "--activity-budget", "0"},
	} {
		var stdout, stderr bytes.Buffer
		e := &env{getenv: func(string) string { return "" }, stdout: &stdout, stderr: &stderr}
		if code := run(context.Background(), e, args); code != exitUsage {
			t.Errorf("%v: exit %d, want %d; stderr %q", args, code, exitUsage, stderr.String())
		}
		if stdout.Len() != 0 || strings.Count(stderr.String(), "\n") != 1 {
			t.Errorf("%v: stdout %q stderr %q, want one error line", args, stdout.String(), stderr.String())
		}
	}
}

// A tiny benchmark on a throwaway database of the test server writes its
// results file with the targets and the machine it ran on.
func TestBenchWritesResults(t *testing.T) {
	out := filepath.Join(t.TempDir(), "bench", "results.md")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e, stdout, stderr := benchEnv(t)
	code := run(ctx, e, []string{"bench", "--machines", "8", "--budget", "4", "--time-scale", "50", "--turn-median", "3s",
		"--drain-wait-machines", "4", "--drain-wait", "5s", "--drain-wait-time-scale", "50", "--scenario", "fleet,drain-wait", "--out", out})
	if code != exitOK {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", code, stdout.String(), stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Targets", "makespan ÷ LB", "SQL statements / machine", "CPUs", "| fleet | drain-wait |",
		"`migrator bench --budget 4", "--machines 8",
		"history rollouts' makespan ÷ LB", "| 3; ρ = 0.64 |", "### fleet: what the history order rests on (ρ)", "| 0.81 |"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("results file lacks %q:\n%s", want, b)
		}
	}
	if !strings.Contains(stdout.String(), "results written to "+out) || !strings.Contains(stdout.String(), "rate-limit violations") {
		t.Errorf("stdout %q", stdout.String())
	}
}

// --scenario activity alone, into an existing results file: both strategies
// side by side, and the earlier file's other sections kept with a note.
func TestBenchActivityMergesIntoResults(t *testing.T) {
	out := filepath.Join(t.TempDir(), "results.md")
	earlier := "# Fleet benchmark results\n\nWritten by `migrator bench --large-machines 10000` on 2026-11-27 21:43 UTC; the whole command took 31m3s of wall time.\n\n" +
		"## Targets\n\n| target | measured | |\n|---|---|---|\n| makespan ≤ 1.15 × LB (2,000 machines, B = 100) | 1.047 × LB (2000 machines, B = 100) | met |\n\n" +
		"## Scenarios\n\n| | fleet |\n|---|---|\n| machines (apps) | 2000 (2000) |\n\n## How it is measured\n\n- old notes\n"
	if err := os.WriteFile(out, []byte(earlier), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e, stdout, stderr := benchEnv(t)
	code := run(ctx, e, []string{"bench", "--scenario", "activity", "--activity-machines", "12", "--activity-budget", "4",
		"--activity-time-scale", "60", "--seed", "2", "--out", out})
	if code != exitOK {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", code, stdout.String(), stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Activity: begin at once vs idle first",
		"| | begin at once | idle first, no quiet (idle_quiet_for 0s) | idle first (the policy's idle_quiet_for) |",
		"| idle wait | 0s (run override) | the policy's | the policy's |", "| idle_quiet_for | 0s (override) | 0s (override) | 2m0s (the policy's) |",
		"background delegations cut off", "activity (seed 2): idle-first refuses ≥ 10× fewer turns",
		"Sections of scenarios not re-run are kept from an earlier run: `migrator bench --large-machines 10000` on 2026-11-27 21:43 UTC",
		"| makespan ≤ 1.15 × LB (2,000 machines, B = 100) | 1.047 × LB (2000 machines, B = 100) | met |",
		"## Scenarios\n\n| | fleet |", "| activity-at-once | activity-idle-first-no-quiet | activity-idle-first |"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("results file lacks %q:\n%s", want, b)
		}
	}
	if strings.Contains(string(b), "old notes") {
		t.Error("the earlier notes on method were kept next to the fresh ones")
	}
}

// benchEnv is the CLI environment of a bench test: the test harness's
// PostgreSQL as the bench's server, output captured.
func benchEnv(t *testing.T) (e *env, stdout, stderr *bytes.Buffer) {
	admin := storetest.AdminDSN(t)
	stdout, stderr = &bytes.Buffer{}, &bytes.Buffer{}
	return &env{getenv: func(k string) string {
		if k == benchServerEnv {
			return admin
		}
		return ""
	}, stdout: stdout, stderr: stderr}, stdout, stderr
}
