package cli

import (
	"strings"
	"testing"

	"github.com/hermes-cloud/migrator/store/storetest"
)

// Channels through the binary: set (new, changed, unchanged), list in both
// formats, and the history with who, what before and why.
func TestChannelSetListHistory(t *testing.T) {
	t.Parallel()
	dsn, _ := storetest.NewDB(t)
	env := baseEnv("DATABASE_URL="+dsn, "MIGRATOR_PRINCIPAL=release-bot")

	if r := execMigrator(t, env, "channel", "list"); r.code != 0 || r.stdout != "" || !strings.Contains(r.stderr, "no channels yet") {
		t.Errorf("empty list: %s", r)
	}
	steps := []struct {
		args []string
		want string
	}{
		{[]string{"channel", "set", "stable", "registry.fly.io/hermes-agent:v1"}, "channel stable created: registry.fly.io/hermes-agent:v1"},
		{[]string{"channel", "set", "stable", "registry.fly.io/hermes-agent:v2", "--reason", "weekly release"},
			"channel stable: registry.fly.io/hermes-agent:v2 (was registry.fly.io/hermes-agent:v1)"},
		{[]string{"channel", "set", "stable", "registry.fly.io/hermes-agent:v2"}, "channel stable: registry.fly.io/hermes-agent:v2 (unchanged; recorded)"},
		{[]string{"channel", "set", "canary", "registry.fly.io/hermes-agent@sha256:" + strings.Repeat("ab", 32)}, "channel canary created"},
	}
	for _, s := range steps {
		r := execMigrator(t, env, s.args...)
		if r.code != 0 || !strings.HasPrefix(r.stdout, s.want) || r.stderr != "" {
			t.Errorf("%v: want %q: %s", s.args, s.want, r)
		}
	}

	r := execMigrator(t, env, "channel", "list")
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	if r.code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[0], "NAME") || !strings.HasPrefix(lines[1], "canary") ||
		!strings.HasPrefix(lines[2], "stable") || !strings.Contains(lines[2], "registry.fly.io/hermes-agent:v2") || !strings.Contains(lines[2], "release-bot") {
		t.Errorf("list: %s", r)
	}
	chans := decodeJSON[[]channelJSON](t, execMigrator(t, env, "channel", "list", "--json"))
	if len(chans) != 2 || chans[1].Name != "stable" || chans[1].Image != "registry.fly.io/hermes-agent:v2" || chans[1].UpdatedBy != "release-bot" || chans[1].UpdatedAt == "" {
		t.Errorf("list --json: %+v", chans)
	}

	hist := decodeJSON[[]channelChangeJSON](t, execMigrator(t, env, "channel", "history", "stable", "--json"))
	if len(hist) != 3 || hist[0].PreviousImage != "registry.fly.io/hermes-agent:v2" || hist[1].Reason != "weekly release" ||
		hist[1].PreviousImage != "registry.fly.io/hermes-agent:v1" || hist[2].PreviousImage != "" || hist[2].SetBy != "release-bot" {
		t.Errorf("history --json: %+v", hist)
	}
	r = execMigrator(t, env, "channel", "history", "stable", "--limit", "1")
	lines = strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	if r.code != 0 || len(lines) != 2 || !strings.HasPrefix(lines[0], "SET AT") || !strings.Contains(lines[1], "release-bot") {
		t.Errorf("history table: %s", r)
	}
}
