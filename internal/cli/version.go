package cli

import (
	"fmt"
	"runtime/debug"

	"github.com/spf13/cobra"
)

func init() { register(newVersionCmd) }

func newVersionCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print the migrator version",
		Example: "  migrator version",
		Args:    checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := e.version
			if v == "" {
				v = "dev"
			}
			if bi, ok := debug.ReadBuildInfo(); ok && v == "dev" {
				for _, s := range bi.Settings {
					if s.Key == "vcs.revision" {
						v = "dev+" + s.Value
					}
				}
			}
			fmt.Fprintf(e.stdout, "migrator %s\n", v)
			return nil
		},
	}
}
