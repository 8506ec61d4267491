package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
)

// The dry run shows a real fleet as a run would treat it: each machine's
// state (down ones moved without a drain and left down, one on an
// unreachable host deferred), and the machines left out with why. Bad input
// about them is one line, exit 2, nothing written: a container no selected
// machine has, a selector that matches only machines a run does not move.
func TestRunCreateRealFleet(t *testing.T) {
	t.Parallel()
	// The autostop agent stays up for the test: at 50× its idle timeout
	// would pass during a slow set-up and make the count of down machines
	// depend on the machine's load.
	cfg := fleetsim.Config{AutostopAfter: 24 * time.Hour}
	cfg.RealFleet()
	w := newSimWorld(t, cfg, 50)
	id := func(app string, i int) string { return w.sim.MachineIDs(app)[i] }
	create := func(extra ...string) []string {
		return append([]string{"run", "create", "--cause", "image-migration", "--image", "registry.fly.io/hermes-agent:v2", "--no-pin"}, extra...)
	}

	dry := execMigrator(t, w.env, create("--dry-run")...)
	if dry.code != 0 {
		t.Fatalf("dry run: %s", dry)
	}
	lines := strings.Split(dry.stdout, "\n")
	for _, want := range [][]string{
		{"STATE", "CURRENT IMAGE"},
		{id("hermes-agent-2", 0), "stopped", "none (stopped): moved without a drain, left down"},
		{id("hermes-agent-3", 0), "suspended", "none (suspended): moved without a drain, left down"},
		{id("hermes-agent-6", 0), "host unreachable", "would be deferred"},
		{"2 machines are not running (stopped, suspended): moved without a drain and left down"},
		{"1 machine is on a host that is not ok"},
		{"left out (3, never touched):"},
		{id("hermes-agent-5", 1), "release-command machine"},
		{id("hermes-agent-5", 2), "console machine"},
		{id("hermes-agent-7", 0), "multi-container machine, no --container", "containers app, sidecar"},
	} {
		if !hasLine(lines, want...) {
			t.Errorf("dry run has no line with %q:\n%s", want, dry.stdout)
		}
	}
	js := decodeJSON[dryRunJSON](t, execMigrator(t, w.env, create("--dry-run", "--json")...))
	if len(js.Excluded) != 3 || js.ToMove != 8 {
		t.Errorf("dry run --json: %d excluded, %d to move; want 3 and 8 (7 apps' agents + the one beside the release and console machines)", len(js.Excluded), js.ToMove)
	}
	for _, p := range js.Plan {
		if p.MachineID == id("hermes-agent-3", 0) && (p.State != "suspended" || p.HostStatus != "ok" || !strings.HasPrefix(p.Digest, "sha256:")) {
			t.Errorf("suspended machine in the plan: %+v", p)
		}
		if p.MachineID == id("hermes-agent-6", 0) && p.HostStatus != "unreachable" {
			t.Errorf("unreachable machine in the plan: %+v", p)
		}
	}
	// With --container app the multi-container agent is planned.
	ctr := decodeJSON[dryRunJSON](t, execMigrator(t, w.env, create("--dry-run", "--json", "--container", "app", "--app", "hermes-agent-7")...))
	if len(ctr.Plan) != 1 || ctr.Plan[0].Image != fleetsim.DefaultImage || len(ctr.Excluded) != 0 || ctr.Selector.Container != "app" {
		t.Errorf("--container app: %+v", ctr)
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"a container nobody has", create("--container", "nope"), `--container nope: no selected machine has a container "nope"`},
		{"a container name that is not one", create("--container", "a b"), `--container "a b" is not a container name`},
		{"only a multi-container machine", create("--app", "hermes-agent-7"),
			"matched only machines a run does not move: hermes-agent-7/" + id("hermes-agent-7", 0) + " (multi-container machine, no --container)"},
		{"only release-command and console machines", create("--app", "hermes-agent-5", "--machine", id("hermes-agent-5", 1), "--machine", id("hermes-agent-5", 2)),
			"(release-command machine), hermes-agent-5/" + id("hermes-agent-5", 2) + " (console machine)"},
		{"the same with --dry-run", create("--dry-run", "--app", "hermes-agent-7"), "matched only machines a run does not move"},
	} {
		r := execMigrator(t, w.env, tc.args...)
		if r.code != 2 || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: want exit 2, one line with %q: %s", tc.name, tc.want, r)
		}
	}
	requireNothingWritten(t, w.st)
}
