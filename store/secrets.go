package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Results of a secret write, as secret_syncs records them.
const (
	SecretSet    = "set"
	SecretFailed = "failed"
)

// SecretSync is one write (or failed attempt) of an agent's drain secret
// to its Fly app. It never holds the secret.
type SecretSync struct {
	ID         int64
	App        string
	SecretName string
	// KeyID fingerprints the control-plane key the secret was derived from.
	KeyID  string
	Result string // SecretSet or SecretFailed
	// FlyDigest is the digest Fly listed for the value after the write.
	FlyDigest string
	// SecretsVersion is the app's secrets version after the write (set only).
	SecretsVersion uint64
	RequestedBy    string
	Error          string
	At             time.Time
}

// RecordSecretSync writes s with its events in one transaction of the
// caller (q from Store.InTx) or, on a pool, one statement each.
func (q *Q) RecordSecretSync(ctx context.Context, s SecretSync, events ...Event) (SecretSync, error) {
	var version *int64
	if s.Result == SecretSet {
		v := int64(s.SecretsVersion)
		version = &v
	}
	err := q.db.QueryRow(ctx, `
		INSERT INTO secret_syncs (app, secret_name, key_id, result, fly_digest, secrets_version, requested_by, error)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		RETURNING id, at`,
		s.App, s.SecretName, s.KeyID, s.Result, s.FlyDigest, version, s.RequestedBy, s.Error).Scan(&s.ID, &s.At)
	if err != nil {
		return SecretSync{}, fmt.Errorf("record secret sync of %s: %w", s.App, err)
	}
	if err := q.AppendEvents(ctx, Scope{}, events...); err != nil {
		return SecretSync{}, err
	}
	return s, nil
}

// LastSecretSet returns the last successful write of secret name to app;
// ok is false when migrator never wrote it.
func (q *Q) LastSecretSet(ctx context.Context, app, name string) (s SecretSync, ok bool, err error) {
	var version *int64
	err = q.db.QueryRow(ctx, `
		SELECT id, app, secret_name, key_id, result, fly_digest, secrets_version, requested_by, error, at
		FROM secret_syncs WHERE app = $1 AND secret_name = $2 AND result = 'set'
		ORDER BY id DESC LIMIT 1`, app, name).Scan(&s.ID, &s.App, &s.SecretName, &s.KeyID, &s.Result,
		&s.FlyDigest, &version, &s.RequestedBy, &s.Error, &s.At)
	if errors.Is(err, pgx.ErrNoRows) {
		return SecretSync{}, false, nil
	}
	if err != nil {
		return SecretSync{}, false, fmt.Errorf("last secret sync of %s: %w", app, err)
	}
	if version != nil {
		s.SecretsVersion = uint64(*version)
	}
	return s, true, nil
}

// AppSecretsVersion is the app's secrets version after migrator's last
// write of any secret to it (0: none), which a machine update asks for as
// min_secrets_version so the new instance holds what was written.
func (q *Q) AppSecretsVersion(ctx context.Context, app string) (uint64, error) {
	var v *int64
	err := q.db.QueryRow(ctx, `SELECT max(secrets_version) FROM secret_syncs WHERE app = $1 AND result = 'set'`, app).Scan(&v)
	if err != nil {
		return 0, fmt.Errorf("secrets version of %s: %w", app, err)
	}
	if v == nil {
		return 0, nil
	}
	return uint64(*v), nil
}

// ListSecretSyncs returns the secret writes (and failed attempts), newest
// first: of app when not empty, at most limit rows (0: no limit).
func (q *Q) ListSecretSyncs(ctx context.Context, app string, limit int) ([]SecretSync, error) {
	var lim *int
	if limit > 0 {
		lim = &limit
	}
	rows, err := q.db.Query(ctx, `
		SELECT id, app, secret_name, key_id, result, fly_digest, secrets_version, requested_by, error, at
		FROM secret_syncs WHERE ($1 = '' OR app = $1) ORDER BY id DESC LIMIT $2`, app, lim)
	if err != nil {
		return nil, fmt.Errorf("list secret syncs: %w", err)
	}
	defer rows.Close()
	var out []SecretSync
	for rows.Next() {
		var s SecretSync
		var version *int64
		if err := rows.Scan(&s.ID, &s.App, &s.SecretName, &s.KeyID, &s.Result, &s.FlyDigest, &version,
			&s.RequestedBy, &s.Error, &s.At); err != nil {
			return nil, fmt.Errorf("list secret syncs: %w", err)
		}
		if version != nil {
			s.SecretsVersion = uint64(*version)
		}
		out = append(out, s)
	}
	return out, rows.Err()
}
