package cli

import (
	"errors"
	"fmt"
	"regexp"
	"text/tabwriter"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/hermes-cloud/migrator/internal/imagepin"
	"github.com/hermes-cloud/migrator/store"
)

func init() { register(newChannelCmd) }

// channelNameRe is the channels table's own check, so a bad name is a clear
// usage error before any write.
var channelNameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)

const channelExitCodes = `Exit status: 0 ok; 1 the database operation failed; 2 usage or configuration
error (a malformed channel name or image reference, an unknown channel).`

func newChannelCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "channel",
		Short: "Auto-update channels: the image each channel's machines are kept on",
		Long: "A channel names the image auto-update moves its machines to. Setting it records who\n" +
			"set it, when and why; serve's auto-update tick creates a run for the machines whose\n" +
			"image differs.\n\n" + channelExitCodes,
		Example: `  migrator channel set stable registry.fly.io/hermes-agent:v2 --reason "weekly release"
  migrator channel list
  migrator channel history stable`,
		Args: checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newChannelSetCmd(e), newChannelListCmd(e), newChannelHistoryCmd(e))
	return cmd
}

func checkChannelName(cmd *cobra.Command, name string) error {
	if !channelNameRe.MatchString(name) {
		return usagef("%s: channel name %q: want lower-case letters, digits, '.', '_' or '-', starting with a letter or digit", cmd.CommandPath(), name)
	}
	return nil
}

func newChannelSetCmd(e *env) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "set NAME IMAGE [--reason TEXT]",
		Short: "Point a channel at an image (created if new); the change is kept in its history",
		Long: "Point channel NAME at IMAGE, recorded as set by MIGRATOR_PRINCIPAL (else the OS user).\n" +
			"The image reference is checked here and pinned to a digest when a run is created.\n\n" + channelExitCodes,
		Example: `  migrator channel set stable registry.fly.io/hermes-agent:v2 --reason "weekly release"
  migrator channel set canary registry.fly.io/hermes-agent@sha256:4f1c…`,
		Args: checkArgs(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			name, image := args[0], args[1]
			if err := checkChannelName(cmd, name); err != nil {
				return err
			}
			if _, err := imagepin.Parse(image, false); err != nil {
				return usagef("%s: %v", cmd.CommandPath(), err)
			}
			st, closeDB, err := openRunStore(ctx, e)
			if err != nil {
				return err
			}
			defer closeDB()
			// One transaction: the channel and its history row change together.
			var ch, prev store.Channel
			err = st.InTx(ctx, func(q *store.Q, _ pgx.Tx) error {
				var err error
				if prev, err = q.GetChannel(ctx, name); err != nil && !errors.Is(err, store.ErrNotFound) {
					return err
				}
				ch, err = q.SetChannel(ctx, name, image, principal(e), reason)
				return err
			})
			if err != nil {
				return fmt.Errorf("channel set %s: %w", name, err)
			}
			switch {
			case prev.Image == "":
				fmt.Fprintf(e.stdout, "channel %s created: %s\n", ch.Name, ch.Image)
			case prev.Image == ch.Image:
				fmt.Fprintf(e.stdout, "channel %s: %s (unchanged; recorded)\n", ch.Name, ch.Image)
			default:
				fmt.Fprintf(e.stdout, "channel %s: %s (was %s)\n", ch.Name, ch.Image, prev.Image)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the channel's history")
	return cmd
}

type channelJSON struct {
	Name      string `json:"name"`
	Image     string `json:"image"`
	UpdatedBy string `json:"updated_by"`
	Reason    string `json:"reason"`
	UpdatedAt string `json:"updated_at"`
}

func newChannelListCmd(e *env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List channels with their image and who set it when",
		Long:    "List every channel by name with its image, who set it, when and why.\n\n" + channelExitCodes,
		Example: "  migrator channel list\n  migrator channel list --json",
		Args:    checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			st, closeDB, err := openRunStore(ctx, e)
			if err != nil {
				return err
			}
			defer closeDB()
			chans, err := st.Q().ListChannels(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				out := []channelJSON{}
				for _, c := range chans {
					out = append(out, channelJSON{c.Name, c.Image, c.UpdatedBy, c.Reason, stamp(c.UpdatedAt)})
				}
				return writeJSON(e.stdout, out)
			}
			if len(chans) == 0 {
				fmt.Fprintln(e.stderr, "no channels yet: create one with `migrator channel set NAME IMAGE`")
				return nil
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tIMAGE\tSET BY\tSET AT\tREASON")
			for _, c := range chans {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Name, c.Image, c.UpdatedBy, stamp(c.UpdatedAt), oneLine(c.Reason, 50))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array of channels")
	return cmd
}

type channelChangeJSON struct {
	Name          string `json:"name"`
	Image         string `json:"image"`
	PreviousImage string `json:"previous_image"`
	SetBy         string `json:"set_by"`
	Reason        string `json:"reason"`
	SetAt         string `json:"set_at"`
}

func newChannelHistoryCmd(e *env) *cobra.Command {
	var (
		asJSON bool
		limit  int
	)
	cmd := &cobra.Command{
		Use:     "history NAME",
		Short:   "Show a channel's changes, newest first",
		Long:    "Show every change of channel NAME, newest first: the image, the one before, who, when, why.\n\n" + channelExitCodes,
		Example: "  migrator channel history stable\n  migrator channel history stable --json --limit 5",
		Args:    checkArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			name := args[0]
			if err := checkChannelName(cmd, name); err != nil {
				return err
			}
			if limit < 1 {
				return usagef("%s: --limit %d: want 1 or more", cmd.CommandPath(), limit)
			}
			st, closeDB, err := openRunStore(ctx, e)
			if err != nil {
				return err
			}
			defer closeDB()
			if _, err := st.Q().GetChannel(ctx, name); errors.Is(err, store.ErrNotFound) {
				return usagef("channel %s not found (see `migrator channel list`)", name)
			} else if err != nil {
				return err
			}
			changes, err := st.Q().ChannelHistory(ctx, name, limit)
			if err != nil {
				return err
			}
			if asJSON {
				out := []channelChangeJSON{}
				for _, c := range changes {
					out = append(out, channelChangeJSON{c.Name, c.Image, c.PreviousImage, c.SetBy, c.Reason, stamp(c.SetAt)})
				}
				return writeJSON(e.stdout, out)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "SET AT\tIMAGE\tPREVIOUS\tSET BY\tREASON")
			for _, c := range changes {
				prev := c.PreviousImage
				if prev == "" {
					prev = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", stamp(c.SetAt), c.Image, prev, c.SetBy, oneLine(c.Reason, 50))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array of changes")
	cmd.Flags().IntVar(&limit, "limit", 100, "at most this many changes")
	return cmd
}
