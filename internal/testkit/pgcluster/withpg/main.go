// Command withpg runs one command against a throwaway PostgreSQL server: it
// starts a cluster in a temporary directory, creates database "migrator",
// runs the command with DATABASE_URL pointing at it, then stops the server,
// removes the directory and exits with the command's status.
//
//	go run ./internal/pgcluster/withpg -- sh -c 'migrator db upgrade && migrator db status'
//
// It is the local stand-in for a real database until the sandbox exists.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hermes-cloud/migrator/internal/testkit/pgcluster"
)

const dbName = "migrator"

func main() {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: withpg [--] command [args...]")
		os.Exit(2)
	}
	os.Exit(run(args))
}

func run(args []string) int {
	dir, err := os.MkdirTemp("", "withpg-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "withpg: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	// The server may run as another OS user (when we are root): let it in.
	if err := os.Chmod(dir, 0o711); err != nil {
		fmt.Fprintf(os.Stderr, "withpg: %v\n", err)
		return 1
	}
	c, err := pgcluster.Start(dir + "/cluster")
	if err != nil {
		fmt.Fprintf(os.Stderr, "withpg: %v\n", err)
		return 1
	}
	defer c.Stop()
	if err := createDB(c.DSN("postgres")); err != nil {
		fmt.Fprintf(os.Stderr, "withpg: create database %s: %v\n", dbName, err)
		return 1
	}

	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "DATABASE_URL="+c.DSN(dbName))
	// Let the command handle Ctrl-C itself; we only clean up after it.
	signal.Ignore(os.Interrupt, syscall.SIGTERM)
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		return ee.ExitCode()
	default:
		fmt.Fprintf(os.Stderr, "withpg: %v\n", err)
		return 1
	}
}

func createDB(adminDSN string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, adminDSN)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{dbName}.Sanitize())
	return err
}
