package cli

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/hermes-cloud/migrator/internal/drainsecret"
	"github.com/hermes-cloud/migrator/internal/secretsync"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/store"
)

// drainKeyEnv holds the control-plane key every agent's drain secret is
// derived from.
const drainKeyEnv = "MIGRATOR_DRAIN_KEY"

func init() { register(newSecretCmd) }

func newSecretCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "secret",
		Short: "Per-agent drain secrets (derived from " + drainKeyEnv + ", never stored)",
		Example: "  export " + drainKeyEnv + "=\"$(openssl rand -base64 32)\"\n" +
			"  migrator secret sync --app-prefix hermes-agent- --dry-run\n" +
			"  migrator secret show --app hermes-agent-1",
		Args: checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newSecretShowCmd(e), newSecretSyncCmd(e), newSecretHistoryCmd(e))
	return cmd
}

func newSecretShowCmd(e *env) *cobra.Command {
	var app string
	cmd := &cobra.Command{
		Use:   "show --app APP",
		Short: "Print the drain secret of one agent, for provisioning",
		Long: "Print the drain secret of one agent's Fly app on stdout, and nothing else there; on stderr\n" +
			"a hint of the command that provisions it as HERMES_DASHBOARD_DRAIN_SECRET, with a\n" +
			"placeholder instead of the value (stderr ends up in CI logs and terminals' scrollback).\n" +
			"The secret is derived from " + drainKeyEnv + " (base64 of at least 32 random bytes) and the\n" +
			"app name, so migrator never stores it. The hint stages the secret (--stage): without it\n" +
			"`fly secrets set` restarts the app's machines, cutting its users off; the agent picks the\n" +
			"secret up at its next recreate (the next run). `migrator secret sync` does this for a fleet.",
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
			key, err := drainKey(e)
			if err != nil {
				return err
			}
			secret := drainsecret.Derive(key, app)
			if err := drainsecret.CheckSecret(secret); err != nil {
				return fmt.Errorf("derived secret for %s: %w", app, err)
			}
			fmt.Fprintln(e.stdout, secret)
			fmt.Fprintf(e.stderr, "fly secrets set --stage HERMES_DASHBOARD_DRAIN_SECRET=<value from stdout> -a %s\n", app)
			return nil
		},
	}
	cmd.Flags().StringVar(&app, "app", "", "the agent's Fly app name (required)")
	return cmd
}

type secretSyncFlags struct {
	selectorFlags
	dryRun, asJSON bool
}

func newSecretSyncCmd(e *env) *cobra.Command {
	var f secretSyncFlags
	cmd := &cobra.Command{
		Use:   "sync [selector] [--dry-run] [--json]",
		Short: "Set each selected app's HERMES_DASHBOARD_DRAIN_SECRET to its derived secret",
		Long: `Set the Fly app secret HERMES_DASHBOARD_DRAIN_SECRET of every app with a selected
machine to the secret derived from ` + drainKeyEnv + `, through the Machines API's app
secrets endpoints (` + flyTokenEnv + `). The selector is run create's.

An app whose secret is current is not written again: current means Fly lists
the secret with the digest recorded at migrator's last write, under the same key
(its fingerprint is recorded). Otherwise it is written, and the write is
recorded in Postgres (secret_syncs, with an event): app, key fingerprint, Fly's
digest, the app's new secrets version, who and when; never the secret. Failures
are per app and reported; a rerun writes only what is left. --dry-run says what
would be written and writes nothing.

A running agent sees the new secret only when its machine is recreated: until
then its drain endpoint answers 401. Every machine update a run makes asks Fly
for at least the recorded secrets version, so the next run hands the secret
over (use run create --undrainable recreate for that run). A new
` + drainKeyEnv + ` (key rotation) is the same command: every app is written again,
and each agent answers 401 to the new secret until its next recreate.

On stdout a line per app (--json: one object) and a summary line.
Exit status: 0 every app is current or written (or would be, with --dry-run);
1 some failed (rerun to finish them); 2 usage or configuration error.`,
		Example: `  migrator secret sync --app-prefix hermes-agent- --dry-run
  migrator secret sync --app-prefix hermes-agent-
  migrator secret sync --app hermes-agent-7 --json`,
		Args: checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return secretSync(cmd, e, f) },
	}
	f.selectorFlags.add(cmd.Flags(), "provision")
	cmd.Flags().BoolVar(&f.dryRun, "dry-run", false, "say which apps would be written; write nothing")
	cmd.Flags().BoolVar(&f.asJSON, "json", false, "print the result as a JSON object")
	return cmd
}

func secretSync(cmd *cobra.Command, e *env, f secretSyncFlags) error {
	ctx := cmd.Context()
	sel, err := f.selector(cmd, e)
	if err != nil {
		return err
	}
	key, err := drainKey(e)
	if err != nil {
		return err
	}
	c, err := loadComponents(ctx, e, needs{fleet: true}, cliLogger(e))
	if err != nil {
		return err
	}
	defer c.close()
	if err := requireCurrentSchema(ctx, c.store); err != nil {
		return err
	}
	machines, err := orchestrator.SelectMachines(ctx, c.fly, sel)
	var only *orchestrator.ExcludedOnlyError
	if errors.As(err, &only) {
		return fmt.Errorf("secret sync: the selector (%s) %s", describeSelector(sel), strings.TrimPrefix(err.Error(), "selector "))
	}
	if errors.Is(err, orchestrator.ErrNothingSelected) {
		return fmt.Errorf("secret sync: the selector (%s) matched no machines", describeSelector(sel))
	}
	if err != nil {
		return fmt.Errorf("secret sync: %s", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	var apps []string
	for _, m := range machines {
		apps = append(apps, m.App)
	}
	slices.Sort(apps)
	apps = slices.Compact(apps)
	rep, err := secretsync.Sync(ctx, secretsync.Config{Key: key, RequestedBy: principal(e), DryRun: f.dryRun, Logger: c.log},
		c.fly, c.store, apps)
	if err != nil {
		return fmt.Errorf("secret sync: %w", err)
	}
	if f.asJSON {
		if err := writeJSON(e.stdout, rep); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "APP\tACTION\tREASON\tSECRETS VERSION\tERROR")
		for _, r := range rep.Results {
			version, errText := "-", "-"
			if r.SecretsVersion > 0 {
				version = fmt.Sprint(r.SecretsVersion)
			}
			if r.Error != "" {
				errText = oneLine(r.Error, 120)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.App, r.Action, r.Reason, version, errText)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "\nkey %s: %s\n", rep.KeyID, countList(rep.Counts,
			[]string{secretsync.Set, secretsync.WouldSet, secretsync.Current, secretsync.Failed}))
	}
	if rep.Failed() {
		return fmt.Errorf("secret sync: %d of %d %s failed; rerun to finish them", rep.Counts[secretsync.Failed],
			len(apps), plural(len(apps), "app", "apps"))
	}
	if f.dryRun {
		fmt.Fprintf(e.stderr, "dry run: nothing was written (%d %s would be)\n", rep.Counts[secretsync.WouldSet],
			plural(rep.Counts[secretsync.WouldSet], "app", "apps"))
	} else if n := rep.Counts[secretsync.Set]; n > 0 {
		fmt.Fprintf(e.stderr, "%d %s written; their agents get the secret at their next recreate (run create --undrainable recreate moves them)\n",
			n, plural(n, "app", "apps"))
	}
	return nil
}

type secretSyncJSON struct {
	ID             int64   `json:"id"`
	App            string  `json:"app"`
	SecretName     string  `json:"secret_name"`
	KeyID          string  `json:"key_id"`
	Result         string  `json:"result"`
	FlyDigest      string  `json:"fly_digest"`
	SecretsVersion *uint64 `json:"secrets_version"`
	RequestedBy    string  `json:"requested_by"`
	Error          string  `json:"error"`
	At             string  `json:"at"`
}

func newSecretHistoryCmd(e *env) *cobra.Command {
	var (
		app    string
		limit  int
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "history [--app A] [--limit N] [--json]",
		Short: "Audit drain secret writes: what was set, when and by whom (never the secret)",
		Long: `List the drain secret writes secret sync made (and its failed attempts), newest
first, from Postgres: app, result (set or failed), the key's fingerprint, the
digest Fly listed after the write, the app's secrets version, who and when.

Exit status: 0 ok (also when nothing matches); 1 the query failed; 2 a bad flag
or no DATABASE_URL.`,
		Example: `  migrator secret history --app hermes-agent-7
  migrator secret history --limit 20 --json`,
		Args: checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 0 {
				return usagef("%s: --limit %d: want 0 (no limit) or more", cmd.CommandPath(), limit)
			}
			ctx := cmd.Context()
			st, done, err := openRunStore(ctx, e)
			if err != nil {
				return err
			}
			defer done()
			rows, err := st.Q().ListSecretSyncs(ctx, strings.TrimSpace(app), limit)
			if err != nil {
				return fmt.Errorf("secret history: %w", err)
			}
			if asJSON {
				out := make([]secretSyncJSON, 0, len(rows))
				for _, r := range rows {
					j := secretSyncJSON{ID: r.ID, App: r.App, SecretName: r.SecretName, KeyID: r.KeyID, Result: r.Result,
						FlyDigest: r.FlyDigest, RequestedBy: r.RequestedBy, Error: r.Error, At: stamp(r.At)}
					if r.Result == store.SecretSet {
						v := r.SecretsVersion
						j.SecretsVersion = &v
					}
					out = append(out, j)
				}
				return writeJSON(e.stdout, out)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "AT\tAPP\tRESULT\tKEY ID\tFLY DIGEST\tSECRETS VERSION\tREQUESTED BY\tERROR")
			for _, r := range rows {
				version, digest, errText := "-", r.FlyDigest, "-"
				if r.Result == store.SecretSet {
					version = fmt.Sprint(r.SecretsVersion)
				}
				if digest == "" {
					digest = "-"
				}
				if r.Error != "" {
					errText = oneLine(r.Error, 100)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", stamp(r.At), r.App, r.Result, r.KeyID, digest, version,
					r.RequestedBy, errText)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&app, "app", "", "only this Fly app")
	cmd.Flags().IntVar(&limit, "limit", 100, "at most this many rows, newest first (0: all)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	return cmd
}
