package orchestrator

// A Fly release per run and app. `fly deploy` records a release for what
// it deploys and writes its id and version into each machine's
// config.metadata (flyctl's createReleaseInBackend and
// setMachineReleaseData); `fly releases` then shows it, and `fly scale
// count` clones new machines from the newest release's image. A run that
// moved an app's machines without one would leave Fly saying the old
// release is current, and the next `fly scale count` would clone the old
// image.
//
// So the first machine of an app a run updates records the release
// (store.Q.ClaimRelease: one replica asks Fly, the others wait a poll for
// it), marks it running, and every update of that app carries it in its
// config.metadata (the rollback restores what the machine had before).
// Once the app's machines of the run are all done, the fill tick finishes
// it: complete, failed (one failed or was rolled back) or interrupted (the
// run was cancelled first). A token whose scope does not cover Fly's
// GraphQL API (Fly refuses it: *flymachines.ReleasesUnauthorizedError)
// fails nothing: the run goes on without releases, says so once
// (run.release_unavailable), and asks no more for its other apps; any
// other failure to record one is noted for that app and the update goes
// on without it.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/store"
)

// releaseClaimStale is how long a claim of a release may go unanswered
// before another replica takes it over (its replica died): a create is one
// call of at most the adapter's call timeout.
const releaseClaimStale = time.Minute

// releaseMetadata is the config.metadata of the run's release for this
// machine's app, recording the release first if no machine of the app did
// (nil: the run records none for it). hold=true: another replica is
// recording it right now; the step returns (n, err) and tries again.
func (s *step) releaseMetadata(ctx context.Context) (md map[string]string, n next, hold bool, err error) {
	q := s.o.store.Q()
	rel, claimed, err := q.ClaimRelease(ctx, s.m.RunID, s.m.App, s.m.ToImage, releaseClaimStale)
	if err != nil {
		return nil, next{}, true, err
	}
	if claimed {
		rel, err = s.createRelease(ctx, q)
		if err != nil {
			return nil, next{}, true, err
		}
	}
	switch rel.State {
	case store.ReleaseClaimed:
		s.persistCalls(ctx)
		return nil, wait(s.o.cfg.PollInterval), true, nil
	case store.ReleaseCreated, store.ReleaseFinished:
		s.m.ReleaseID, s.m.ReleaseVersion = rel.ReleaseID, rel.Version
		return map[string]string{flymachines.MetadataReleaseID: rel.ReleaseID,
			flymachines.MetadataReleaseVersion: strconv.Itoa(rel.Version)}, next{}, false, nil
	}
	return nil, next{}, false, nil
}

// createRelease asks Fly for the release this caller claimed and records
// the answer.
func (s *step) createRelease(ctx context.Context, q *store.Q) (store.RunRelease, error) {
	rel := store.RunRelease{RunID: s.m.RunID, App: s.m.App, Image: s.m.ToImage}
	unavailable, err := q.RunReleasesUnavailable(ctx, s.m.RunID)
	if err != nil {
		return rel, err
	}
	var created flymachines.Release
	var cerr error
	if unavailable {
		cerr = errors.New("Fly's GraphQL API refused this run's token for another app already")
	} else {
		created, cerr = s.o.fly.CreateRelease(ctx, s.m.App, s.m.ToImage)
	}
	var ue *flymachines.ReleasesUnauthorizedError
	switch {
	case cerr == nil:
		rel.State, rel.ReleaseID, rel.Version = store.ReleaseCreated, created.ID, created.Version
		// As flyctl before it updates machines: the release is running.
		if err := s.o.fly.UpdateRelease(ctx, s.m.App, created.ID, flymachines.ReleaseRunning, ""); err != nil {
			s.log.Warn("mark the Fly release running", "error", err)
		}
		s.events = append(s.events, store.Event{Kind: "run.release_created", Target: s.m.App,
			Detail: map[string]any{"release_id": created.ID, "version": created.Version, "image": s.m.ToImage}})
	case unavailable || errors.As(cerr, &ue):
		rel.State, rel.Error = store.ReleaseUnavailable, cerr.Error()
		if !unavailable {
			s.events = append(s.events, store.Event{Kind: "run.release_unavailable", Target: strconv.FormatInt(s.m.RunID, 10),
				Error: cerr.Error(), Detail: map[string]any{"app": s.m.App,
					"note": "the token's scope does not cover Fly's GraphQL API: this run records no Fly release (fly releases and fly scale count keep the old image); the migration goes on"}})
		}
	default:
		rel.State, rel.Error = store.ReleaseError, cerr.Error()
		s.events = append(s.events, store.Event{Kind: "run.release_failed", Target: s.m.App, Error: cerr.Error(),
			Detail: map[string]any{"note": "no Fly release recorded for this app in this run; the migration goes on"}})
	}
	if err := q.SetRunRelease(ctx, rel.RunID, rel.App, rel.State, rel.ReleaseID, rel.Version, rel.Error); err != nil {
		return rel, err
	}
	return rel, nil
}

// finishReleases sends the final status of the releases whose app's
// machines of their run are all done (the fill tick calls it, outside its
// transaction). A status Fly refuses for good is recorded and not sent
// again; a transient failure is tried at the next tick.
func (o *Orchestrator) finishReleases(ctx context.Context) {
	q := o.store.Q()
	todo, err := q.ReleasesToFinish(ctx, 50)
	if err != nil {
		o.log.Warn("list Fly releases to finish", "error", err)
		return
	}
	for _, r := range todo {
		err := o.fly.UpdateRelease(ctx, r.App, r.ReleaseID, r.FinalStatus, r.Detail)
		if err != nil && retryable(ctx, err) {
			o.log.Warn("finish a Fly release, will retry", "run_id", r.RunID, "app", r.App, "error", err)
			continue
		}
		errText := ""
		if err != nil {
			errText = err.Error()
		}
		if err := q.FinishRunRelease(ctx, r.RunID, r.App, r.FinalStatus, errText); err != nil {
			o.log.Warn("record a finished Fly release", "run_id", r.RunID, "app", r.App, "error", err)
			continue
		}
		ev := store.Event{Kind: "run.release_finished", Target: r.App, Error: errText,
			Detail: map[string]any{"release_id": r.ReleaseID, "version": r.Version, "status": r.FinalStatus}}
		if r.Detail != "" {
			ev.Detail["detail"] = r.Detail
		}
		if err := q.AppendEvents(ctx, store.Scope{RunID: r.RunID}, ev); err != nil {
			o.log.Warn("record a finished Fly release", "error", fmt.Errorf("run %d app %s: %w", r.RunID, r.App, err))
		}
	}
}
