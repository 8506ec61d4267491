// Package secretsync provisions each agent's drain secret as the Fly app
// secret HERMES_DASHBOARD_DRAIN_SECRET, through the Machines API's app
// secrets endpoints (fly-go v0.9.3 flaps: ListAppSecrets, SetAppSecret).
//
// The secret of an app is derived from the control-plane key
// (drainsecret.Derive) and never stored. What is recorded, in Postgres
// (store.SecretSync, with the call as an event, in one transaction), is
// that it was written: the app, the key's fingerprint (drainsecret.KeyID),
// the digest Fly lists for the value after the write, the app's secrets
// version after the write, who and when. Fly never shows a secret's value,
// only a digest whose computation is Fly's own, so "current" is decided
// from that record: the app still lists the secret with the digest
// recorded at migrator's last write, under the same key fingerprint.
// Anything else is written
// again: the secret is missing, was never written by migrator, was changed
// by someone else (another digest), or the key was rotated (another
// fingerprint). A sync is therefore idempotent: a second run writes
// nothing, and a rerun after failures writes only what is left.
//
// A machine sees an app secret only when it is recreated; every machine
// update a run makes asks for at least the version recorded here
// (min_secrets_version), so an agent answers 401 from the sync until its
// next recreate. See docs/operations.md, "Enrolling a fleet", for rotation.
package secretsync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/hermes-cloud/migrator/internal/callrec"
	"github.com/hermes-cloud/migrator/internal/drainsecret"
	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/store"
)

// SecretName is the app secret a Hermes agent reads its drain secret from.
const SecretName = "HERMES_DASHBOARD_DRAIN_SECRET"

// Fly is what a sync needs of the Machines API.
type Fly interface {
	ListAppSecrets(ctx context.Context, app string) ([]flymachines.AppSecret, error)
	SetAppSecret(ctx context.Context, app, name, value string) (flymachines.SecretSet, error)
}

var _ Fly = (*flymachines.Client)(nil)

// Actions, per app.
const (
	Current  = "current"   // already holds the derived secret: nothing written
	Set      = "set"       // written now
	WouldSet = "would_set" // --dry-run: would be written
	Failed   = "failed"    // reading or writing failed; a rerun retries it
)

// Defaults.
const (
	DefaultParallel = 8
	DefaultTimeout  = 30 * time.Second
)

// Config configures a sync. Key and RequestedBy are required.
type Config struct {
	// Key is the control-plane key (MIGRATOR_DRAIN_KEY) secrets derive from.
	Key []byte
	// RequestedBy is recorded with every write.
	RequestedBy string
	// DryRun reads and compares but writes nothing, anywhere.
	DryRun bool
	// Parallel bounds the apps handled at once (the Fly transport paces
	// the calls per app on top). Default 8.
	Parallel int
	// Timeout bounds one app's calls. Default 30 s.
	Timeout time.Duration
	// Logger gets one line per app (never a secret). Default: discard.
	Logger *slog.Logger
}

func (c Config) withDefaults() (Config, error) {
	if err := drainsecret.CheckKey(c.Key); err != nil {
		return c, fmt.Errorf("secretsync: %w", err)
	}
	if c.RequestedBy == "" {
		return c, errors.New("secretsync: RequestedBy is required")
	}
	if c.Parallel < 0 || c.Timeout < 0 {
		return c, errors.New("secretsync: parallel and timeout must not be negative")
	}
	if c.Parallel == 0 {
		c.Parallel = DefaultParallel
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// Result is one app's outcome.
type Result struct {
	App    string `json:"app"`
	Action string `json:"action"`
	// Reason says why it was (or would be) written: "missing", "not written
	// by migrator", "changed outside migrator", "key rotated"; or, for
	// current, "unchanged since <time>".
	Reason string `json:"reason"`
	// SecretsVersion is the app's secrets version after the write (set), or
	// at the write that made it current.
	SecretsVersion uint64 `json:"secrets_version,omitempty"`
	Error          string `json:"error,omitempty"`
}

// Report is the sync of every app, in the order given.
type Report struct {
	KeyID   string         `json:"key_id"`
	DryRun  bool           `json:"dry_run"`
	Results []Result       `json:"results"`
	Counts  map[string]int `json:"counts"`
}

// Failed reports whether any app failed.
func (r Report) Failed() bool { return r.Counts[Failed] > 0 }

// Sync brings every app's drain secret to the one derived from cfg.Key.
func Sync(ctx context.Context, cfg Config, fly Fly, st *store.Store, apps []string) (Report, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return Report{}, err
	}
	rep := Report{KeyID: drainsecret.KeyID(cfg.Key), DryRun: cfg.DryRun, Results: make([]Result, len(apps)),
		Counts: map[string]int{}}
	var g errgroup.Group
	g.SetLimit(cfg.Parallel)
	for i, app := range apps {
		g.Go(func() error {
			actx, cancel := context.WithTimeout(ctx, cfg.Timeout)
			defer cancel()
			rep.Results[i] = syncApp(actx, cfg, rep.KeyID, fly, st, app)
			r := rep.Results[i]
			cfg.Logger.Info("secret sync", "app", app, "action", r.Action, "reason", r.Reason,
				"secrets_version", r.SecretsVersion, "error", r.Error)
			return nil
		})
	}
	_ = g.Wait() // every app records its own result
	for _, r := range rep.Results {
		rep.Counts[r.Action]++
	}
	return rep, nil
}

func syncApp(ctx context.Context, cfg Config, keyID string, fly Fly, st *store.Store, app string) Result {
	res := Result{App: app}
	secret := drainsecret.Derive(cfg.Key, app)
	if err := drainsecret.CheckSecret(secret); err != nil {
		res.Action, res.Error = Failed, err.Error()
		return res
	}
	calls := &callrec.Log{}
	ctx = callrec.WithLog(ctx, calls)
	list, err := fly.ListAppSecrets(ctx, app)
	if err != nil {
		res.Action, res.Error = Failed, fmt.Sprintf("list secrets: %v", err)
		return res
	}
	last, recorded, err := st.Q().LastSecretSet(ctx, app, SecretName)
	if err != nil {
		res.Action, res.Error = Failed, err.Error()
		return res
	}
	digest, present := digestOf(list)
	switch {
	case !present:
		res.Reason = "missing"
	case !recorded:
		res.Reason = "not written by migrator"
	case last.KeyID != keyID:
		res.Reason = "key rotated"
	case last.FlyDigest == "" || last.FlyDigest != digest:
		res.Reason = "changed outside migrator"
	default:
		res.Action, res.SecretsVersion = Current, last.SecretsVersion
		res.Reason = "unchanged since " + last.At.UTC().Format(time.RFC3339)
		return res
	}
	if cfg.DryRun {
		res.Action = WouldSet
		return res
	}
	set, setErr := fly.SetAppSecret(ctx, app, SecretName, secret)
	rec := store.SecretSync{App: app, SecretName: SecretName, KeyID: keyID, RequestedBy: cfg.RequestedBy}
	ev := store.Event{Kind: "secret.set", Target: app, Detail: map[string]any{"name": SecretName, "key_id": keyID,
		"reason": res.Reason, "requested_by": cfg.RequestedBy}}
	if setErr != nil {
		rec.Result, rec.Error = store.SecretFailed, setErr.Error()
		ev.Kind, ev.Error = "secret.set_failed", setErr.Error()
		res.Action, res.Error = Failed, fmt.Sprintf("set secret: %v", setErr)
	} else {
		// Record the digest as the list shows it, since the list is what
		// the next sync compares with (the write's answer may spell it
		// otherwise, or not at all); the answer's digest if the list fails.
		digest := set.Digest
		if list, err := fly.ListAppSecrets(ctx, app); err == nil {
			if d, ok := digestOf(list); ok && d != "" {
				digest = d
			}
		}
		rec.Result, rec.FlyDigest, rec.SecretsVersion = store.SecretSet, digest, set.Version
		set.Digest = digest
		ev.Detail["fly_digest"], ev.Detail["secrets_version"] = set.Digest, set.Version
		res.Action, res.SecretsVersion = Set, set.Version
	}
	// The write is on record whatever ctx has left: the secret is set at Fly.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	events := append(store.EventsFromCalls(calls.Take()), ev)
	err = st.InTx(wctx, func(q *store.Q, _ pgx.Tx) error {
		_, err := q.RecordSecretSync(wctx, rec, events...)
		return err
	})
	if err != nil {
		// Fly has the secret (or refused it) but the record is lost: the
		// next sync sees "not written by migrator" and writes it again.
		res.Action, res.Error = Failed, fmt.Sprintf("record: %v", err)
	}
	return res
}

// digestOf finds the drain secret's digest in an app's secret list.
func digestOf(list []flymachines.AppSecret) (string, bool) {
	for _, s := range list {
		if s.Name == SecretName {
			return s.Digest, true
		}
	}
	return "", false
}
