package main

import (
	"fmt"
	"strings"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/hermes-cloud/migrator/internal/drainsecret"
)

// drainKeyEnv holds the control-plane key every agent's drain secret is
// derived from.
const drainKeyEnv = "MIGRATOR_DRAIN_KEY"

func init() { register(newSecretCmd) }

func newSecretCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "secret",
		Short: "Per-agent drain secrets (derived from " + drainKeyEnv + ", never stored)",
		Example: "  export " + drainKeyEnv + "=\"$(openssl rand -base64 48)\"\n" +
			"  migrator secret show --app hermes-agent-1",
		Args: checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newSecretShowCmd(e))
	return cmd
}

func newSecretShowCmd(e *env) *cobra.Command {
	var app string
	cmd := &cobra.Command{
		Use:   "show --app APP",
		Short: "Print the drain secret of one agent, for provisioning",
		Long: "Print the drain secret of one agent's Fly app on stdout, and on stderr the command that\n" +
			"provisions it as HERMES_DASHBOARD_DRAIN_SECRET. The secret is derived from " + drainKeyEnv + "\n" +
			"(at least 32 bytes) and the app name, so migrator never stores it. Note that\n" +
			"`fly secrets set` restarts the app's machines unless given --stage.",
		Example: "  migrator secret show --app hermes-agent-1\n" +
			"  fly secrets set --stage HERMES_DASHBOARD_DRAIN_SECRET=\"$(migrator secret show --app hermes-agent-1 2>/dev/null)\" -a hermes-agent-1",
		Args: checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if app == "" {
				return usagef("%s: --app is required", cmd.CommandPath())
			}
			if strings.IndexFunc(app, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) >= 0 {
				return usagef("%s: --app %q is not a Fly app name", cmd.CommandPath(), app)
			}
			key := e.getenv(drainKeyEnv)
			if key == "" {
				return usagef("%s is not set (it must hold at least %d bytes)", drainKeyEnv, drainsecret.MinKeyBytes)
			}
			if err := drainsecret.CheckKey([]byte(key)); err != nil {
				return usagef("%s: %v", drainKeyEnv, err)
			}
			secret := drainsecret.Derive([]byte(key), app)
			if err := drainsecret.CheckSecret(secret); err != nil {
				return fmt.Errorf("derived secret for %s: %w", app, err)
			}
			fmt.Fprintln(e.stdout, secret)
			fmt.Fprintf(e.stderr, "fly secrets set HERMES_DASHBOARD_DRAIN_SECRET=%s -a %s\n", secret, app)
			return nil
		},
	}
	cmd.Flags().StringVar(&app, "app", "", "the agent's Fly app name (required)")
	return cmd
}
