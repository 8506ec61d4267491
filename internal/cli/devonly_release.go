//go:build release

package cli

import (
	"github.com/spf13/cobra"
)

// The development commands are not in the release build (they link the
// test kits); asked for anyway, each says where to find it instead of
// cobra's bare "unknown command".
func init() {
	for _, name := range []string{"sandbox", "fleetsim", "bench"} {
		register(func(*env) *cobra.Command {
			return &cobra.Command{
				Use:                name,
				Hidden:             true,
				DisableFlagParsing: true,
				RunE: func(cmd *cobra.Command, _ []string) error {
					return usagef("%s is a development command, left out of this release build: run it from a clone of the repository (go run ./cmd/migrator %s)", cmd.Name(), cmd.Name())
				},
			}
		})
	}
}
