package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Fly releases (015): one per run and app, for the image the run moves.
// A replica claims the row before it asks Fly (so two machines of one app
// do not record two releases), records what Fly answered, and the
// periodic sweep finishes the release once the app's machines of the run
// are all done.

// RunRelease states.
const (
	ReleaseClaimed     = "claimed"     // a replica is creating it
	ReleaseCreated     = "created"     // Fly recorded it (ID, Version)
	ReleaseUnavailable = "unavailable" // the token's scope does not cover Fly's GraphQL API
	ReleaseError       = "error"       // creating it failed otherwise
	ReleaseFinished    = "finished"    // its final status was sent (Status)
)

// RunRelease is the Fly release of one app in one run.
type RunRelease struct {
	RunID                 int64
	App, Image, State     string
	ReleaseID             string
	Version               int
	Status, Error         string
	ClaimedAt             time.Time
	CreatedAt, FinishedAt time.Time
}

const runReleaseColumns = `run_id, app, image, state, release_id, version, status, error, claimed_at, created_at, finished_at`

// runReleaseColumnsRR are runReleaseColumns of run_releases as rr.
const runReleaseColumnsRR = `rr.run_id, rr.app, rr.image, rr.state, rr.release_id, rr.version, rr.status, rr.error,
	rr.claimed_at, rr.created_at, rr.finished_at`

func scanRunRelease(row pgx.Row) (RunRelease, error) {
	var r RunRelease
	var created, finished *time.Time
	err := row.Scan(&r.RunID, &r.App, &r.Image, &r.State, &r.ReleaseID, &r.Version, &r.Status, &r.Error, &r.ClaimedAt,
		&created, &finished)
	r.CreatedAt, r.FinishedAt = fromNullTime(created), fromNullTime(finished)
	return r, err
}

// ClaimRelease claims the release of (runID, app) for image: claimed=true
// when this caller must create it now (the row is new, or an earlier claim
// older than stale never recorded an answer: that replica died). Otherwise
// it returns the row as it is (claimed by another, created, unavailable,
// failed or finished).
func (q *Q) ClaimRelease(ctx context.Context, runID int64, app, image string, stale time.Duration) (RunRelease, bool, error) {
	r, err := scanRunRelease(q.db.QueryRow(ctx, `
		INSERT INTO run_releases (run_id, app, image) VALUES ($1, $2, $3)
		ON CONFLICT (run_id, app) DO UPDATE SET claimed_at = now()
			WHERE run_releases.state = 'claimed' AND run_releases.claimed_at < now() - make_interval(secs => $4)
		RETURNING `+runReleaseColumns, runID, app, image, stale.Seconds()))
	if err == nil {
		return r, true, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return RunRelease{}, false, fmt.Errorf("claim the release of run %d app %s: %w", runID, app, err)
	}
	r, err = scanRunRelease(q.db.QueryRow(ctx, `SELECT `+runReleaseColumns+` FROM run_releases WHERE run_id = $1 AND app = $2`,
		runID, app))
	if err != nil {
		return RunRelease{}, false, fmt.Errorf("read the release of run %d app %s: %w", runID, app, err)
	}
	return r, false, nil
}

// SetRunRelease records what Fly answered for a claimed release: state
// created (with id and version), unavailable or error (with errText).
func (q *Q) SetRunRelease(ctx context.Context, runID int64, app, state, id string, version int, errText string) error {
	_, err := q.db.Exec(ctx, `UPDATE run_releases SET state = $3, release_id = $4, version = $5, error = $6,
			created_at = CASE WHEN $3 = 'created' THEN now() END
		WHERE run_id = $1 AND app = $2 AND state = 'claimed'`, runID, app, state, id, version, errText)
	if err != nil {
		return fmt.Errorf("record the release of run %d app %s: %w", runID, app, err)
	}
	return nil
}

// RunReleasesUnavailable reports whether Fly refused the token's scope
// for a release of run runID already: its other apps do not ask again.
func (q *Q) RunReleasesUnavailable(ctx context.Context, runID int64) (bool, error) {
	var unavailable bool
	err := q.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM run_releases WHERE run_id = $1 AND state = 'unavailable')`,
		runID).Scan(&unavailable)
	if err != nil {
		return false, fmt.Errorf("read the releases of run %d: %w", runID, err)
	}
	return unavailable, nil
}

// ReleaseToFinish is a created release whose app has no machine of its run
// left on its path, with the status it ends with: failed when one of them
// failed or was rolled back, interrupted when the run was cancelled
// before one of them moved, else complete; Detail says which.
type ReleaseToFinish struct {
	RunRelease
	FinalStatus, Detail string
}

// ReleasesToFinish returns up to limit created releases whose app's
// machines of the run are all done.
func (q *Q) ReleasesToFinish(ctx context.Context, limit int) ([]ReleaseToFinish, error) {
	rows, err := q.db.Query(ctx, `
		SELECT `+runReleaseColumnsRR+`, c.bad, c.cancelled, c.n
		FROM run_releases rr
		CROSS JOIN LATERAL (
			SELECT count(*) FILTER (WHERE m.outcome IN ('failed', 'rolled_back')) AS bad,
				count(*) FILTER (WHERE m.outcome = 'cancelled') AS cancelled, count(*) AS n,
				bool_or(m.state <> 'done') AS open
			FROM machine_migrations m WHERE m.run_id = rr.run_id AND m.app = rr.app
		) c
		WHERE rr.state = 'created' AND NOT coalesce(c.open, false)
		ORDER BY rr.run_id, rr.app
		LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("list releases to finish: %w", err)
	}
	defer rows.Close()
	var out []ReleaseToFinish
	for rows.Next() {
		var f ReleaseToFinish
		var created, finished *time.Time
		var bad, cancelled, n int
		if err := rows.Scan(&f.RunID, &f.App, &f.Image, &f.State, &f.ReleaseID, &f.Version, &f.Status, &f.Error,
			&f.ClaimedAt, &created, &finished, &bad, &cancelled, &n); err != nil {
			return nil, fmt.Errorf("list releases to finish: %w", err)
		}
		f.CreatedAt, f.FinishedAt = fromNullTime(created), fromNullTime(finished)
		switch {
		case bad > 0:
			f.FinalStatus, f.Detail = "failed", fmt.Sprintf("%d of %d machine(s) of the app failed or were rolled back", bad, n)
		case cancelled > 0:
			f.FinalStatus, f.Detail = "interrupted", fmt.Sprintf("run cancelled before %d of %d machine(s) of the app moved", cancelled, n)
		default:
			f.FinalStatus = "complete"
		}
		out = append(out, f)
	}
	return out, rows.Err()
}

// FinishRunRelease records the final status sent for a created release.
func (q *Q) FinishRunRelease(ctx context.Context, runID int64, app, status, errText string) error {
	_, err := q.db.Exec(ctx, `UPDATE run_releases SET state = 'finished', status = $3, error = $4, finished_at = now()
		WHERE run_id = $1 AND app = $2 AND state = 'created'`, runID, app, status, errText)
	if err != nil {
		return fmt.Errorf("finish the release of run %d app %s: %w", runID, app, err)
	}
	return nil
}

// RunReleases returns the releases of run runID, by app.
func (q *Q) RunReleases(ctx context.Context, runID int64) ([]RunRelease, error) {
	rows, err := q.db.Query(ctx, `SELECT `+runReleaseColumns+` FROM run_releases WHERE run_id = $1 ORDER BY app`, runID)
	if err != nil {
		return nil, fmt.Errorf("read the releases of run %d: %w", runID, err)
	}
	defer rows.Close()
	var out []RunRelease
	for rows.Next() {
		r, err := scanRunRelease(rows)
		if err != nil {
			return nil, fmt.Errorf("read the releases of run %d: %w", runID, err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}
