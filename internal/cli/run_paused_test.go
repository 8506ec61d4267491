package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// bgFollow is `migrator run follow` running in the background, its stdout
// read line by line as it comes, so a test can act once follow has seen
// the run and then see what follow makes of the change.
type bgFollow struct {
	t      *testing.T
	cmd    *exec.Cmd
	lines  chan string
	stderr bytes.Buffer
	mu     sync.Mutex
	stdout strings.Builder
	eof    chan struct{}
}

func startFollow(t *testing.T, environ []string, args ...string) *bgFollow {
	t.Helper()
	f := &bgFollow{t: t, lines: make(chan string, 1000), eof: make(chan struct{})}
	f.cmd = exec.Command(migratorBinary(t), append([]string{"run", "follow"}, args...)...)
	f.cmd.Env, f.cmd.Stderr = environ, &f.stderr
	out, err := f.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(f.eof)
		defer close(f.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f.mu.Lock()
			f.stdout.WriteString(sc.Text() + "\n")
			f.mu.Unlock()
			f.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		if f.cmd.ProcessState == nil {
			_ = f.cmd.Process.Kill()
			<-f.eof
			_ = f.cmd.Wait()
		}
	})
	return f
}

// waitLine waits for a line of follow's containing every part.
func (f *bgFollow) waitLine(parts ...string) {
	f.t.Helper()
	limit := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-f.lines:
			if !ok {
				f.t.Fatalf("follow ended without a line with %q:\n%s", parts, f.wait())
			}
			if hasLine([]string{l}, parts...) {
				return
			}
		case <-limit:
			f.t.Fatalf("no line with %q in 30s:\n%s", parts, f.output())
		}
	}
}

func (f *bgFollow) output() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stdout.String()
}

// wait waits for follow to exit (30 s at most) and returns what it did.
func (f *bgFollow) wait() cliResult {
	f.t.Helper()
	select {
	case <-f.eof:
	case <-time.After(30 * time.Second):
		_ = f.cmd.Process.Kill()
		<-f.eof
		_ = f.cmd.Wait()
		f.t.Fatalf("follow still running 30s after the change:\n%s", f.output())
	}
	err := f.cmd.Wait()
	res := cliResult{stdout: f.output(), stderr: f.stderr.String()}
	if res.code, err = exitCode(err); err != nil {
		f.t.Fatalf("follow: %v", err)
	}
	return res
}

// follow stops at a paused run, at once or when the run pauses under it,
// saying why and how to go on, exit 1; --keep-watching watches on through
// a resume and a pause. No serve runs: the test moves the run itself,
// through the store and the orchestrator as serve and the CLI do.
func TestRunFollowStopsAtPause(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t, fleetsim.Config{Apps: 3, Seed: 21}, 50, "MIGRATOR_PRINCIPAL=oncall-test")
	ctx := context.Background()
	r, _, err := w.orch.CreateRun(ctx, orchestrator.RunRequest{Cause: policy.Operator, Image: "registry.fly.io/hermes-agent:v2",
		MaxUnavailable: "1", Canary: 1, RequestedBy: "oncall-test", Selector: store.Selector{Org: w.sim.Org()}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != store.RunRunning {
		t.Fatalf("created run is %s", r.State)
	}
	id := fmt.Sprint(r.ID)
	hint := "resume with: migrator run resume " + id + " (or cancel: migrator run cancel " + id + ")"
	stoppedAtPause := func(res cliResult, reason string) {
		t.Helper()
		if res.code != 1 || strings.Count(res.stderr, "\n") != 1 ||
			!strings.HasPrefix(res.stderr, "migrator: run "+id+" paused: "+reason+"; 1 machine in flight finishes; "+hint) {
			t.Errorf("want exit 1 and one line on stderr with the reason %q and the hint: %s", reason, res)
		}
		checkFollowLines(t, res.stdout, 0, "run "+id+" paused: no machine done yet")
	}

	// Paused already (as SettleRun pauses a run whose canary failed):
	// follow stops after its first read.
	canary := "canary failed (1 canary machine(s) failed or rolled back)"
	if _, err := w.st.Q().SetRunState(ctx, r.ID, []store.RunState{store.RunRunning}, store.RunPaused, canary, "test"); err != nil {
		t.Fatal(err)
	}
	res := execMigrator(t, w.env, "run", "follow", id)
	stoppedAtPause(res, canary)
	if !strings.HasPrefix(res.stdout, "20") || !strings.Contains(res.stdout, "run "+id+" paused: operator → ") {
		t.Errorf("follow does not show the paused run first: %s", res)
	}

	// --keep-watching watches on: the run resumes and pauses again under it,
	// and only Ctrl-C stops it.
	kw := startFollow(t, w.env, id, "--keep-watching")
	kw.waitLine("run " + id + " paused: operator → ")
	if _, err := w.orch.Resume(ctx, r.ID, "oncall-bob"); err != nil {
		t.Fatal(err)
	}
	kw.waitLine("run " + id + " running: resumed by oncall-bob")
	if _, err := w.orch.Pause(ctx, r.ID, "oncall-bob"); err != nil {
		t.Fatal(err)
	}
	kw.waitLine("run " + id + " paused: paused by oncall-bob (resume with: migrator run resume " + id + ")")
	if err := kw.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if res := kw.wait(); res.code != 1 || !strings.Contains(res.stderr, "stopped following run "+id+"; the run goes on") {
		t.Errorf("--keep-watching on a paused run, interrupted: %s", res)
	}

	// Paused while follow watches: follow stops at its next read.
	if _, err := w.orch.Resume(ctx, r.ID, "oncall-bob"); err != nil {
		t.Fatal(err)
	}
	f := startFollow(t, w.env, id)
	f.waitLine("run " + id + " running: operator → ")
	if _, err := w.orch.Pause(ctx, r.ID, "oncall-carol"); err != nil {
		t.Fatal(err)
	}
	res = f.wait()
	stoppedAtPause(res, "paused by oncall-carol")
	if !strings.Contains(res.stdout, "run "+id+" paused: paused by oncall-carol (resume with") {
		t.Errorf("follow does not show the pause as a change: %s", res)
	}
}

// pause, resume and cancel --json print the run after the change: the same
// object run status --json prints, the sentence on stderr, exit codes as
// without --json.
func TestRunStateChangeJSON(t *testing.T) {
	t.Parallel()
	w := newSimWorld(t, fleetsim.Config{Apps: 3, Seed: 22}, 50, "MIGRATOR_PRINCIPAL=oncall-test")
	r, _, err := w.orch.CreateRun(context.Background(), orchestrator.RunRequest{Cause: policy.Operator,
		Image: "registry.fly.io/hermes-agent:v2", MaxUnavailable: "1", RequestedBy: "oncall-test",
		Selector: store.Selector{Org: w.sim.Org()}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprint(r.ID)
	change := func(verb, wantState, wantReason, wantSentence string) statusOut {
		t.Helper()
		res := execMigrator(t, w.env, "run", verb, id, "--json")
		out := decodeJSON[statusOut](t, res)
		if res.code != 0 || out.ID != r.ID || out.State != wantState || out.StateReason != wantReason || out.Machines != 3 ||
			!strings.HasPrefix(res.stderr, wantSentence) || strings.Count(res.stderr, "\n") != 1 {
			t.Errorf("run %s --json: want %s (%s), the sentence %q on stderr: %+v\n%s", verb, wantState, wantReason, wantSentence, out, res)
		}
		// The very object run status --json prints (nothing moves without serve).
		var got, status map[string]any
		st := execMigrator(t, w.env, "run", "status", id, "--json")
		if json.Unmarshal([]byte(res.stdout), &got) != nil || json.Unmarshal([]byte(st.stdout), &status) != nil || !reflect.DeepEqual(got, status) {
			t.Errorf("run %s --json is not the run status --json object:\n%s\nstatus:\n%s", verb, res.stdout, st.stdout)
		}
		return out
	}
	p := change("pause", "paused", "paused by oncall-test", "run "+id+" paused: no machine starts; 1 in flight finish")
	if p.Counts.ByState["pending"] != 2 || p.Counts.ByState["ready"] != 1 || len(p.InFlight) != 1 || p.InFlight[0].State != "ready" {
		t.Errorf("paused run: %+v", p)
	}
	change("resume", "running", "resumed by oncall-test", "run "+id+" running")
	c := change("cancel", "cancelling", "cancelled by oncall-test", "run "+id+" cancelling: 2 not started were cancelled; 1 in flight")
	if c.Counts.ByOutcome["cancelled"] != 2 || c.Counts.ByState["done"] != 2 {
		t.Errorf("cancelled run: %+v", c)
	}
	// A change the state refuses: exit 1, one line, no JSON.
	if res := execMigrator(t, w.env, "run", "pause", id, "--json"); res.code != 1 || res.stdout != "" ||
		strings.Count(res.stderr, "\n") != 1 || !strings.Contains(res.stderr, "the run is cancelling: only a running run can be paused") {
		t.Errorf("refused pause --json: %s", res)
	}
	if res := execMigrator(t, w.env, "run", "resume", "4242", "--json"); res.code != 2 || res.stdout != "" {
		t.Errorf("resume --json of an unknown run: %s", res)
	}
}
