// Package cli is migrator's command line: every subcommand, its flags, the
// environment it reads, its output and its exit status. Flags and
// environment variables are read here and only here; every other package
// takes a config struct. cmd/migrator is a few lines over Main.
//
// Each subcommand registers itself from its own file (run_*.go for the run
// subcommands, serve.go, history.go, ...). The sandbox, fleetsim and bench
// commands, which link the test kits (internal/testkit), are built only
// without the release build tag: the shipped image has none of them.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/hermes-cloud/migrator/internal/printsafe"
)

// Exit codes, as documented in docs/runbook.md.
const (
	exitOK      = 0
	exitFailed  = 1 // the operation failed
	exitUsage   = 2 // usage or configuration error
	programName = "migrator"
)

// usageError marks an error caused by bad input or configuration: exit 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// usagef returns a usage/configuration error (exit status 2).
func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// env is how commands read the process environment; tests replace it.
type env struct {
	getenv func(string) string
	// environ lists the environment (KEY=VALUE), for the variables read by
	// prefix (the API's tokens); nil: none.
	environ func() []string
	stdout  io.Writer
	stderr  io.Writer
	// version is the build's version ("" reads as "dev").
	version string
}

// cleaned returns e with its stdout and stderr behind printsafe writers.
// Commands print what came from outside (agents' platform names and
// errors, Fly's answers, rows of the database, operators' reasons): nothing
// any of them prints reaches the terminal with a control sequence (OSC 52
// writes the operator's clipboard, ESC [2J clears the screen) or a control
// character other than newline and tab. run follow's live view, the one
// printer that moves the cursor itself, writes its own sequences to the
// writer underneath (Unwrap).
func (e *env) cleaned() *env {
	c := *e
	if _, done := e.stdout.(*printsafe.Writer); !done && e.stdout != nil {
		c.stdout = printsafe.NewWriter(e.stdout)
	}
	if _, done := e.stderr.(*printsafe.Writer); !done && e.stderr != nil {
		c.stderr = printsafe.NewWriter(e.stderr)
	}
	return &c
}

// commands holds the constructors of every subcommand; each file registers
// its own in an init function so the tree grows without touching main.go.
var commands []func(*env) *cobra.Command

func register(f func(*env) *cobra.Command) { commands = append(commands, f) }

func newRoot(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:           programName,
		Short:         "Move a fleet of Hermes agents on Fly.io to new images without cutting their users off",
		SilenceUsage:  true,
		SilenceErrors: true,
		// With Args set, an unknown subcommand reaches this validator and
		// becomes a usage error (exit 2) instead of cobra's plain error.
		Args: checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%s: %w", c.CommandPath(), err)}
	})
	for _, f := range commands {
		root.AddCommand(f(e))
	}
	return root
}

func run(ctx context.Context, e *env, args []string) int {
	e = e.cleaned()
	root := newRoot(e)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(e.stderr, "%s: %v\n", programName, err)
	var ue usageError
	if errors.As(err, &ue) || isCobraUsage(err) {
		return exitUsage
	}
	return exitFailed
}

// isCobraUsage reports the argument errors cobra raises itself (unknown
// command, wrong number of arguments), which are usage errors too.
func isCobraUsage(err error) bool {
	var ae argsError
	return errors.As(err, &ae)
}

// argsError wraps cobra's positional-argument validators so their failures
// exit with the usage status.
type argsError struct{ error }

func (e argsError) Unwrap() error { return e.error }

// checkArgs adapts a cobra.PositionalArgs so its errors are usage errors.
func checkArgs(p cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := p(cmd, args); err != nil {
			return argsError{fmt.Errorf("%s: %w", cmd.CommandPath(), err)}
		}
		return nil
	}
}

// Main runs the migrator command line with args (without the program
// name) and returns the process's exit status. version is what `migrator
// version` prints ("dev" in a build without one).
func Main(ctx context.Context, version string, args []string) int {
	return run(ctx, &env{getenv: os.Getenv, environ: os.Environ, stdout: os.Stdout, stderr: os.Stderr, version: version}, args)
}
