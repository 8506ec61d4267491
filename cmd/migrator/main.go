// Command migrator moves a fleet of always-on Hermes agents on Fly.io to new
// images without cutting their users off. Everything it does is in
// internal/cli; this is the process's entry point.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/hermes-cloud/migrator/internal/cli"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, version, os.Args[1:])
	stop()
	os.Exit(code)
}
