//go:build !release

package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/drainsecret"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/internal/testkit/logbuf"
)

func TestFleetsimServesUntilInterrupted(t *testing.T) {
	var stdout, stderr logbuf.Buffer
	e := &env{getenv: func(string) string { return "" }, stdout: &stdout, stderr: &stderr}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, e, []string{"fleetsim", "--apps", "4", "--machines-per-app", "2", "--listen", "127.0.0.1:0", "--time-scale", "50"})
	}()
	vars := waitFleetsimEnv(t, &stdout, &stderr)
	req, _ := http.NewRequest("GET", vars["FLY_FLAPS_BASE_URL"]+"/v1/apps/hermes-agent-4/machines", nil)
	req.Header.Set("Authorization", "Bearer "+vars["FLY_API_TOKEN"])
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("List through the printed environment: %d", res.StatusCode)
	}
	if strings.Contains(stderr.String(), vars["FLY_API_TOKEN"]) || strings.Contains(stderr.String(), vars["MIGRATOR_DRAIN_KEY"]) {
		t.Error("a secret reached stderr")
	}
	cancel()
	select {
	case code := <-done:
		if code != exitOK {
			t.Fatalf("exit %d; stderr %q", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("fleetsim did not stop on interrupt")
	}
}

// waitFleetsimEnv waits for the environment `migrator fleetsim` prints.
func waitFleetsimEnv(t *testing.T, stdout, stderr *logbuf.Buffer) map[string]string {
	t.Helper()
	vars := map[string]string{}
	deadline := time.Now().Add(10 * time.Second)
	for len(vars) < 5 {
		if time.Now().After(deadline) {
			t.Fatalf("no environment printed; stdout %q stderr %q", stdout.String(), stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
		for _, line := range strings.Split(stdout.String(), "\n") {
			if k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "="); ok {
				vars[k] = v
			}
		}
	}
	for _, k := range []string{"FLY_API_TOKEN", "FLY_FLAPS_BASE_URL", "MIGRATOR_GATEWAY_URL", "MIGRATOR_DRAIN_KEY", "MIGRATOR_FLY_ORG", "MIGRATOR_FLY_REGISTRY_URL"} {
		if vars[k] == "" {
			t.Fatalf("%s missing from %q", k, stdout.String())
		}
	}
	return vars
}

// --activity serves agents that talk: chatty ones have turns in flight from
// the start, and /_sim/state reports the activity totals.
func TestFleetsimActivity(t *testing.T) {
	var stdout, stderr logbuf.Buffer
	e := &env{getenv: func(string) string { return "" }, stdout: &stdout, stderr: &stderr}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, e, []string{"fleetsim", "--apps", "40", "--activity", "--turns-per-hour", "60", "--long-task-share", "0",
			"--listen", "127.0.0.1:0", "--seed", "3"})
	}()
	vars := waitFleetsimEnv(t, &stdout, &stderr)
	req, _ := http.NewRequest("GET", vars["FLY_FLAPS_BASE_URL"]+"/_sim/state", nil)
	req.Header.Set("Authorization", "Bearer "+vars["FLY_API_TOKEN"])
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var st fleetsim.State
	err = json.NewDecoder(res.Body).Decode(&st)
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	busy := 0
	for _, m := range st.Machines {
		if m.ActiveAgents > 0 {
			busy++
		}
	}
	// 60 turns an hour of 41 s on average: about half the agents are busy.
	if busy < 5 || st.Activity.Served < busy {
		t.Fatalf("%d of 40 agents busy, activity %+v: the agents do not talk", busy, st.Activity)
	}
	cancel()
	<-done
}

// --drain-turns starts the benchmark's turn with every drain begun: the
// agent is idle until its drain, then busy with one turn.
func TestFleetsimDrainTurns(t *testing.T) {
	var stdout, stderr logbuf.Buffer
	e := &env{getenv: func(string) string { return "" }, stdout: &stdout, stderr: &stderr}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, e, []string{"fleetsim", "--apps", "2", "--drain-turns", "1h:0", "--api-sim-time", "--time-scale", "20",
			"--listen", "127.0.0.1:0", "--seed", "3"})
	}()
	vars := waitFleetsimEnv(t, &stdout, &stderr)
	exports := fleetsim.ParseExports(stdout.String())
	base := strings.NewReplacer("{app}", "hermes-agent-1").Replace(exports["MIGRATOR_GATEWAY_URL"])
	var st fleetsim.State
	get := func() {
		t.Helper()
		req, _ := http.NewRequest("GET", vars["FLY_FLAPS_BASE_URL"]+"/_sim/state", nil)
		req.Header.Set("Authorization", "Bearer "+vars["FLY_API_TOKEN"])
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		if err := json.NewDecoder(res.Body).Decode(&st); err != nil {
			t.Fatal(err)
		}
	}
	get()
	var id string
	for _, m := range st.Machines {
		if m.ActiveAgents != 0 {
			t.Fatalf("%s busy before any drain", m.App)
		}
		if m.App == "hermes-agent-1" {
			id = m.ID
		}
	}
	key := exports["MIGRATOR_DRAIN_KEY"]
	req, err := http.NewRequest("POST", strings.Replace(base, "{machine_id}", id, 1)+"/api/gateway/drain",
		strings.NewReader(`{"action":"drain","suppress_notification":true}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+drainsecret.Derive([]byte(key), "hermes-agent-1"))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("begin: %d", res.StatusCode)
	}
	get()
	for _, m := range st.Machines {
		if want := map[bool]int{true: 1, false: 0}[m.ID == id]; m.ActiveAgents != want || m.DrainsBegun != want {
			t.Errorf("%s: active %d, drains begun %d; want %d", m.App, m.ActiveAgents, m.DrainsBegun, want)
		}
	}
	cancel()
	<-done
}

// What fleetsim prints, a program starting it reads back.
func TestFleetsimExportsRoundTrip(t *testing.T) {
	vals := map[string]string{"A": "plain-1.2:3", "B": "http://h/{app}/{machine_id}", "C": "it's a 'quote' \\ and $HOME", "D": ""}
	var b strings.Builder
	for k, v := range vals {
		b.WriteString("export " + k + "=" + shellQuote(v) + "\n")
	}
	b.WriteString("fleetsim: not an export\n")
	got := fleetsim.ParseExports(b.String())
	if len(got) != len(vals) {
		t.Fatalf("parsed %v from %q", got, b.String())
	}
	for k, v := range vals {
		if got[k] != v {
			t.Errorf("%s: %q, want %q (printed %q)", k, got[k], v, shellQuote(v))
		}
	}
}

func TestFleetsimUsage(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("apps = 2\nmystery = true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"fleetsim", "--apps", "0"},
		{"fleetsim", "--time-scale", "-1"},
		{"fleetsim", "--busy-fraction", "1.5"},
		{"fleetsim", "--scenario", filepath.Join(dir, "missing.toml")},
		{"fleetsim", "--scenario", bad},
		{"fleetsim", "extra"},
		{"fleetsim", "--activity", "--busy-fraction", "0.3"},
		{"fleetsim", "--turns-per-hour", "3"},
		{"fleetsim", "--activity", "--turns-per-hour", "0"},
		{"fleetsim", "--activity", "--long-task-share", "2"},
		{"fleetsim", "--drain-turns", "0s"},
		{"fleetsim", "--drain-turns", "30s:many"},
		{"fleetsim", "--drain-turns", "30s:9"},
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
