package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/hermes-cloud/migrator/internal/drainsecret"
)

func TestSecretShow(t *testing.T) {
	const key = "SECRETshowTESTK/T2aI010sieWr2fHDzk4b65VO3R5T+nIzu1plwpKQJp"
	const shortKey = "too-short-key-value"
	const weakKey = "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=" // base64 of 32 × 'a'
	const notBase64 = "a drain key that is a sentence, not base64"
	tests := []struct {
		name       string
		env        map[string]string
		args       []string
		wantCode   int
		wantStderr string
	}{
		{name: "prints secret and hint", env: map[string]string{drainKeyEnv: key}, args: []string{"secret", "show", "--app", "hermes-agent-1"}, wantCode: exitOK},
		{name: "no key", env: nil, args: []string{"secret", "show", "--app", "hermes-agent-1"}, wantCode: exitUsage, wantStderr: drainKeyEnv + " is not set"},
		{name: "short key", env: map[string]string{drainKeyEnv: shortKey}, args: []string{"secret", "show", "--app", "hermes-agent-1"}, wantCode: exitUsage, wantStderr: drainKeyEnv + ": drain key is too short"},
		{name: "weak key", env: map[string]string{drainKeyEnv: weakKey}, args: []string{"secret", "show", "--app", "hermes-agent-1"}, wantCode: exitUsage, wantStderr: drainKeyEnv + ": drain key repeats a pattern of 1 byte"},
		{name: "not base64", env: map[string]string{drainKeyEnv: notBase64}, args: []string{"secret", "show", "--app", "hermes-agent-1"}, wantCode: exitUsage, wantStderr: drainKeyEnv + ": drain key is not base64"},
		{name: "no app", env: map[string]string{drainKeyEnv: key}, args: []string{"secret", "show"}, wantCode: exitUsage, wantStderr: "--app is required"},
		{name: "blank app", env: map[string]string{drainKeyEnv: key}, args: []string{"secret", "show", "--app", " hermes-agent-1"}, wantCode: exitUsage, wantStderr: "not a Fly app name"},
		{name: "positional arg", env: map[string]string{drainKeyEnv: key}, args: []string{"secret", "show", "hermes-agent-1"}, wantCode: exitUsage},
		{name: "unknown flag", env: map[string]string{drainKeyEnv: key}, args: []string{"secret", "show", "--ap", "x"}, wantCode: exitUsage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			e := &env{getenv: func(k string) string { return tt.env[k] }, stdout: &stdout, stderr: &stderr}
			code := run(context.Background(), e, tt.args)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr %q", code, tt.wantCode, stderr.String())
			}
			if tt.wantCode != exitOK {
				if stdout.Len() != 0 {
					t.Errorf("stdout %q on failure", stdout.String())
				}
				if !strings.Contains(stderr.String(), tt.wantStderr) || strings.Count(stderr.String(), "\n") != 1 {
					t.Errorf("stderr = %q, want one line with %q", stderr.String(), tt.wantStderr)
				}
				if strings.Contains(stderr.String(), key) || strings.Contains(stderr.String(), shortKey) ||
					strings.Contains(stderr.String(), weakKey) || strings.Contains(stderr.String(), notBase64) {
					t.Error("the key leaked into the error")
				}
				return
			}
			secret := drainsecret.Derive([]byte(key), "hermes-agent-1")
			if stdout.String() != secret+"\n" {
				t.Fatalf("stdout = %q, want the derived secret", stdout.String())
			}
			// The value on stdout only; the hint stages it and shows a
			// placeholder (stderr reaches CI logs and scrollback).
			if want := "fly secrets set --stage HERMES_DASHBOARD_DRAIN_SECRET=<value from stdout> -a hermes-agent-1\n"; stderr.String() != want {
				t.Fatalf("stderr = %q, want %q", stderr.String(), want)
			}
			if strings.Contains(stderr.String(), secret) {
				t.Fatal("the secret is on stderr")
			}
			if strings.Contains(stdout.String()+stderr.String(), key) {
				t.Fatal("the key itself was printed")
			}
		})
	}
}

func TestSecretCommandsHaveExamples(t *testing.T) {
	cmd := newSecretCmd(&env{getenv: func(string) string { return "" }})
	for _, c := range append(cmd.Commands(), cmd) {
		if c.Example == "" {
			t.Errorf("%s has no Example", c.CommandPath())
		}
	}
}
