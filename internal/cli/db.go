package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/hermes-cloud/migrator/store"
)

func init() { register(newDBCmd) }

func newDBCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "db",
		Short: "Manage the database schema (ours and River's) in " + databaseURLEnv,
		Example: "  export " + databaseURLEnv + "=postgres://migrator@localhost:5432/migrator\n" +
			"  migrator db upgrade\n" +
			"  migrator db status",
		Args: checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newDBUpgradeCmd(e), newDBStatusCmd(e))
	return cmd
}

func newDBUpgradeCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "upgrade",
		Short: "Apply River's and migrator's pending migrations (idempotent, safe to run concurrently)",
		Long: "Apply River's own migrations, then migrator's numbered SQL files, each in its own\n" +
			"transaction, under a Postgres advisory lock: a second upgrade running at the same\n" +
			"time waits, then finds nothing to do. Running it on a current schema changes nothing.",
		Example: "  DATABASE_URL=postgres://migrator@localhost:5432/migrator migrator db upgrade",
		Args:    checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			pool, err := openDatabase(ctx, e)
			if err != nil {
				return err
			}
			defer pool.Close()
			res, err := store.Upgrade(ctx, pool, dbLogger(e.stderr))
			printUpgrade(e.stdout, res)
			if err != nil {
				return fmt.Errorf("db upgrade: %w", err)
			}
			if res.NoOp() {
				fmt.Fprintln(e.stdout, "already current: nothing to apply")
			} else {
				fmt.Fprintf(e.stdout, "applied %d migrations: schema is current\n", len(res.River)+len(res.Ours))
			}
			return nil
		},
	}
}

func printUpgrade(w io.Writer, res store.UpgradeResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, v := range res.River {
		fmt.Fprintf(tw, "applied\triver\t%03d\t%s\n", v.Version, v.Name)
	}
	for _, v := range res.Ours {
		fmt.Fprintf(tw, "applied\tmigrator\t%03d\t%s\n", v.Version, v.Name)
	}
	tw.Flush()
}

func newDBStatusCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "List applied and pending migrations, River's and migrator's",
		Long: "List every migration this binary knows, River's and migrator's, with when it was\n" +
			"applied or \"pending\". The last line says whether the schema is current. Exits 1 if an\n" +
			"applied migration file was edited afterwards.",
		Example: "  DATABASE_URL=postgres://migrator@localhost:5432/migrator migrator db status",
		Args:    checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			pool, err := openDatabase(ctx, e)
			if err != nil {
				return err
			}
			defer pool.Close()
			rep, err := store.Status(ctx, pool)
			if err != nil {
				return fmt.Errorf("db status: %w", err)
			}
			return printStatus(e.stdout, rep)
		},
	}
}

// printStatus writes the status table and the verdict line; an edited
// applied migration is an error.
func printStatus(w io.Writer, rep store.StatusReport) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SCHEMA\tVERSION\tNAME\tSTATE\tAPPLIED AT")
	var edited []string
	for _, line := range []struct {
		name string
		st   store.SchemaStatus
	}{{"river", rep.River}, {"migrator", rep.Ours}} {
		for _, a := range line.st.Applied {
			state := "applied"
			switch {
			case a.Modified:
				state = "applied, FILE EDITED SINCE"
				edited = append(edited, a.String())
			case a.Unknown:
				state = "applied (newer than this binary)"
			}
			fmt.Fprintf(tw, "%s\t%03d\t%s\t%s\t%s\n", line.name, a.Version, a.Name, state, formatTime(a.AppliedAt))
		}
		for _, p := range line.st.Pending {
			fmt.Fprintf(tw, "%s\t%03d\t%s\tpending\t-\n", line.name, p.Version, p.Name)
		}
	}
	tw.Flush()
	switch n := rep.PendingCount(); {
	case len(edited) > 0:
		return fmt.Errorf("db status: applied migrations were edited since: %s (add a new migration instead of changing an applied one)", strings.Join(edited, ", "))
	case n == 1:
		fmt.Fprintln(w, "1 migration pending: run `migrator db upgrade`")
	case n > 1:
		fmt.Fprintf(w, "%d migrations pending: run `migrator db upgrade`\n", n)
	default:
		fmt.Fprintln(w, "schema is current")
	}
	return nil
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
