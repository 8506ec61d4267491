package notify_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/hermes-cloud/migrator/internal/notify"
	"github.com/hermes-cloud/migrator/store"
)

// A rollback of a change says what was undone (names only) and that the
// app secrets it picked up stay; one of a plain image says it as before.
func TestRolledBackChangeSays(t *testing.T) {
	var f map[string]any
	if err := json.Unmarshal([]byte(`{"run_id": 7, "cause": "env-edit", "app": "hermes-agent-1", "machine_id": "m1",
		"error": "telegram parked (fatal)", "change": {"env_set": ["TELEGRAM_BOT_TOKEN"], "env_unset": ["OLD"], "secrets_version": 12},
		"secrets_not_restored": 12}`), &f); err != nil {
		t.Fatal(err)
	}
	got := notify.Summary(store.Notification{Event: "machine.rolled_back", Facts: f})
	for _, want := range []string{"migrator run 7 (env-edit): hermes-agent-1/m1 rolled back to the config that ran",
		"(env set TELEGRAM_BOT_TOKEN; env unset OLD undone)", "telegram parked (fatal)",
		"app secrets stay at version 12 (Fly keeps only the newest values: a rollback cannot put them back)"} {
		if !strings.Contains(got, want) {
			t.Errorf("summary %q lacks %q", got, want)
		}
	}
	plain := notify.Summary(store.Notification{Event: "machine.rolled_back", Facts: map[string]any{"run_id": 8.0, "cause": "auto-update",
		"app": "a", "machine_id": "m", "error": "boom"}})
	if plain != "migrator run 8 (auto-update): a/m rolled back to its old image: boom" {
		t.Errorf("plain rollback: %q", plain)
	}
}
