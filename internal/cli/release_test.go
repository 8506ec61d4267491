package cli

import (
	"os/exec"
	"strings"
	"testing"
)

// The shipped binary (built with -tags release, as the Dockerfile does)
// links none of the test kits: no fake Fly API, no benchmark, no initdb
// launcher. The development build still has the sandbox and the simulator.
func TestReleaseBuildHoldsNoTestKit(t *testing.T) {
	deps := func(tags ...string) []string {
		args := append([]string{"list", "-deps"}, tags...)
		out, err := exec.Command("go", append(args, "github.com/hermes-cloud/migrator/cmd/migrator")...).CombinedOutput()
		if err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.Fields(string(out))
	}
	const kit = "github.com/hermes-cloud/migrator/internal/testkit/"
	for _, p := range deps("-tags", "release") {
		if strings.HasPrefix(p, kit) {
			t.Errorf("the release build links %s", p)
		}
	}
	dev := strings.Join(deps(), "\n")
	for _, want := range []string{kit + "fleetsim", kit + "pgcluster", kit + "bench"} {
		if !strings.Contains(dev, want+"\n") && !strings.HasSuffix(dev, want) {
			t.Errorf("the development build lacks %s (the sandbox, fleetsim and bench commands need it)", want)
		}
	}
}
