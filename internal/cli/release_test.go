package cli

import (
	"errors"
	"os/exec"
	"path/filepath"
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

// The release binary itself: no development command in its help, and one
// asked for by name is a usage error that says where it is.
func TestReleaseBinaryHasNoDevelopmentCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the release binary")
	}
	bin := filepath.Join(t.TempDir(), "migrator")
	if out, err := exec.Command("go", "build", "-tags", "release", "-o", bin, "github.com/hermes-cloud/migrator/cmd/migrator").CombinedOutput(); err != nil {
		t.Fatalf("go build -tags release: %v\n%s", err, out)
	}
	help, err := exec.Command(bin, "--help").Output()
	if err != nil {
		t.Fatalf("migrator --help: %v", err)
	}
	for _, name := range []string{"sandbox", "fleetsim", "bench"} {
		if strings.Contains(string(help), "  "+name+" ") {
			t.Errorf("the release binary's help lists %s:\n%s", name, help)
		}
		cmd := exec.Command(bin, name, "--apps", "3")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != exitUsage ||
			!strings.Contains(stderr.String(), name+" is a development command, left out of this release build") {
			t.Errorf("migrator %s on the release binary: %v, stderr %q; want exit 2 saying it is a development command", name, err, stderr.String())
		}
	}
}
