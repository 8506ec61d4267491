package cli

import (
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func TestReadEnvFile(t *testing.T) {
	const value = "5521:AAF-never-shown"
	for _, tc := range []struct {
		name, in string
		want     map[string]string
		err      string // a part of the error; "" for none
	}{
		{"lines, comments and blanks", "# the customer's edit\n\nTELEGRAM_BOT_TOKEN=" + value + "\r\n  # indented comment\nLANG=fr=CA\nEMPTY=\n",
			map[string]string{"TELEGRAM_BOT_TOKEN": value, "LANG": "fr=CA", "EMPTY": ""}, ""},
		{"quotes kept, as Docker does", `QUOTED="a b"` + "\n", map[string]string{"QUOTED": `"a b"`}, ""},
		{"a line without =", "A=1\n" + value + "\n", nil, "line 2: want KEY=VALUE"},
		{"a key twice", "A=1\nA=" + value + "\n", nil, `line 2: "A" given twice`},
		{"a key of --env again", "PRESET=" + value + "\n", nil, `line 1: "PRESET" given twice`},
		{"a line too long", "A=" + strings.Repeat("x", 40<<10) + "\n", nil, "line 1 is longer than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := &cobra.Command{Use: "create"}
			cmd.SetIn(strings.NewReader(tc.in))
			env := map[string]string{"PRESET": "from --env"}
			err := readEnvFile(cmd, "-", env)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one with %q", err, tc.err)
				}
				if strings.Contains(err.Error(), value) || strings.Contains(err.Error(), "xxxx") {
					t.Fatalf("the error shows a value: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			delete(env, "PRESET")
			if !maps.Equal(env, tc.want) {
				t.Fatalf("got %q, want %q", env, tc.want)
			}
		})
	}
}

// TestEnvFileErrorsThroughTheCLI: a bad file is exit 2 with one line
// naming the line, before anything is read from the database or Fly.
func TestEnvFileErrorsThroughTheCLI(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "edit.env")
	if err := os.WriteFile(bad, []byte("TOKEN=ok\nsecret-value-without-key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ file, want string }{
		{bad, "--env-file " + bad + ": line 2: want KEY=VALUE"},
		{filepath.Join(dir, "missing.env"), "no such file or directory"},
	} {
		code, stdout, stderr := runCLI(t, "", "run", "create", "--cause", "env-edit", "--app", "hermes-agent-1", "--env-file", tc.file)
		if code != 2 || !strings.Contains(stderr, tc.want) || strings.Count(strings.TrimSpace(stderr), "\n") != 0 ||
			strings.Contains(stderr, "secret-value") || stdout != "" {
			t.Errorf("--env-file %s: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", tc.file, code, stdout, stderr, tc.want)
		}
	}
}
