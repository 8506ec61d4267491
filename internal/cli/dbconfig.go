package cli

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hermes-cloud/migrator/store"
)

// databaseURLEnv names the variable every command that needs Postgres reads.
const databaseURLEnv = "DATABASE_URL"

// openDatabase connects to DATABASE_URL. Missing, unparseable or unreachable
// are configuration errors (exit 2), said on one line that names the
// variable and the cause and never the password (store builds its messages
// that way).
func openDatabase(ctx context.Context, e *env, opts ...store.OpenOption) (*pgxpool.Pool, error) {
	dsn := strings.TrimSpace(e.getenv(databaseURLEnv))
	if dsn == "" {
		return nil, usagef("%s is not set: set it to the PostgreSQL connection URL, e.g. postgres://user:password@host:5432/migrator", databaseURLEnv)
	}
	pool, err := store.Open(ctx, dsn, opts...)
	if err != nil {
		var ce *store.ConfigError
		var ne *store.ConnectError
		if errors.As(err, &ce) || errors.As(err, &ne) {
			return nil, usagef("%s: %v", databaseURLEnv, err)
		}
		return nil, err
	}
	return pool, nil
}

// dbLogger logs warnings and errors of the database commands to w; their
// results go to stdout, so progress chatter stays out.
func dbLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}
