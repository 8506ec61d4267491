// Package testbin builds the migrator binary once per test binary, for the
// tests that run it as a real process (serve replicas, the CLI end to end).
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var (
	once sync.Once
	path string
	err  error
)

// Migrator returns the path of a migrator binary built from this module's
// cmd/migrator, building it on the first call.
func Migrator(t testing.TB) string {
	t.Helper()
	once.Do(func() {
		dir, mkErr := os.MkdirTemp("", "migrator-bin-")
		if mkErr != nil {
			err = mkErr
			return
		}
		path = filepath.Join(dir, "migrator")
		if out, buildErr := exec.Command("go", "build", "-o", path, "github.com/hermes-cloud/migrator/cmd/migrator").CombinedOutput(); buildErr != nil {
			err = fmt.Errorf("go build: %v\n%s", buildErr, out)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return path
}
