package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DBTX is what the queries need: a pool, a connection or a transaction.
type DBTX interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Store is migrator's access to Postgres.
type Store struct {
	pool *pgxpool.Pool
}

// New returns a Store over pool.
func New(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// Pool returns the underlying pool (River shares it).
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Q returns queries that run outside a transaction.
func (s *Store) Q() *Q { return &Q{db: s.pool} }

// InTx runs fn in one transaction: a state change and its event rows commit
// together or not at all.
func (s *Store) InTx(ctx context.Context, fn func(q *Q, tx pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		return fn(&Q{db: tx}, tx)
	})
}

// Q holds the typed queries; every one is parameterized.
type Q struct {
	db DBTX
}

// NewQ returns queries over db (for callers that hold their own transaction).
func NewQ(db DBTX) *Q { return &Q{db: db} }

// ErrNotFound is returned when a row asked for by id does not exist.
var ErrNotFound = errors.New("not found")

// ErrConflict is returned when a row changed under the writer: another
// execution of the same work got there first.
var ErrConflict = errors.New("concurrent change")

// NotFoundError names what was not found.
type NotFoundError struct {
	What string
	ID   any
}

func (e *NotFoundError) Error() string { return fmt.Sprintf("%s %v not found", e.What, e.ID) }

// Is makes errors.Is(err, ErrNotFound) true.
func (e *NotFoundError) Is(target error) bool { return target == ErrNotFound }

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func fromNullTime(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

func isNoRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }

func nullString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}
