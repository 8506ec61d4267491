package orchestrator

// What a change does to a machine, and whether a machine already has it.
//
// A run moves machines to a change: an image; env variables set or unset
// in config.env; an app secrets version to pick up (min_secrets_version:
// the version Fly answered NAS's secrets write with); a restart; any
// combination, at least one. Every change takes the same path (drain →
// update → verify → bake → rollback), with the policy of its cause.
//
//   - The image: the run's, pinned; without one each machine keeps the
//     digest it runs (image_ref's full reference, resolved when its turn
//     comes, never a tag that may have moved since), or, when a customer's
//     change carries a fleet run's image in the same recreate, that image
//     (store.FillSlots' combining).
//   - The env: applied on the config as read under the lease; the rest of
//     config.env is kept. The values are a customer's: sealed in Postgres
//     (run_env) until the run ends, opened only in memory here, never in a
//     log, an event, an error or a call record.
//   - The secrets version: every update carries min_secrets_version, the
//     highest of the run's and the one `secret sync` last wrote.
//   - A restart: an update with the config unchanged. Fly's restart
//     endpoint (POST …/restart) keeps the instance id and takes no
//     min_secrets_version; an update makes a new instance (the
//     verification proves it by the new instance id, as for any change),
//     picks up app secrets, and drops a suspended machine's snapshot, so a
//     suspended agent wakes as a new process too.
//
// Up to date is judged against the whole change: the image (the config's
// image is the run's; always true when the run keeps each machine's
// image), every env key set with its value and every key unset absent,
// the secrets version proven (store.ProvenSecretsVersion: an update of
// migrator sent at least that version to the machine's current instance;
// Fly shows no machine's version), and never for a restart (each run asks
// for one). An env edit on the current image therefore recreates the
// machine.
//
// A rollback restores the config that ran: the old image digest and the
// keys of config.env the change touched, as they were (sealed in
// migration_changes before the update was sent). App secrets cannot be
// put back (Fly keeps only the newest values): the rollback says so in
// its event and notification. A change with nothing to put back (a
// restart or a secrets version alone: the config did not change) is not
// rolled back: an agent that does not serve after it ends failed, its
// drain cancelled, and on-call is paged (agent.not_serving), as for any
// machine that fails after its update.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/imagepin"
	"github.com/hermes-cloud/migrator/internal/seal"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// FieldError is a run request that cannot be run: the field (as the API
// names it: "cause", "env", "unset_env", "secrets_version", …) and what is
// wrong with it, in one line that never holds an env value. The CLI
// answers it with exit 2, an API with 400 "field X: …".
type FieldError struct {
	Field   string
	Problem string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Problem }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Problem: fmt.Sprintf(format, args...)}
}

// ErrNoSealKey: a run that sets env values needs the seal key
// (Config.Sealer, MIGRATOR_SEAL_KEY) to keep them.
var ErrNoSealKey = errors.New("no seal key (MIGRATOR_SEAL_KEY): env values are kept only sealed")

// Bounds on a change's env, so a request cannot fill a machine's config or
// the database.
const (
	MaxEnvKeys     = 256
	MaxEnvValueLen = 32 << 10
	maxEnvNameLen  = 256
)

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// reservedEnv are the names a change may not set or unset: the agent's
// drain secret (an app secret `secret sync` manages; shadowing it in
// config.env would cut migrator off the drain), and FLY_* (Fly's runtime
// environment).
func reservedEnv(k string) string {
	switch {
	case k == "HERMES_DASHBOARD_DRAIN_SECRET":
		return "is the agent's drain secret, which `migrator secret sync` manages as an app secret"
	case strings.HasPrefix(strings.ToUpper(k), "FLY_"):
		return "is in Fly's runtime environment (FLY_*)"
	}
	return ""
}

// ValidateRequest checks a run request before anything is read or
// written: every problem is a *FieldError naming the field. CreateRun
// calls it; a face (the CLI, an API) may call it first to answer bad
// input before connecting to anything.
func ValidateRequest(req RunRequest) error {
	if _, err := policy.ParseCause(string(req.Cause)); err != nil {
		return fieldErr("cause", "%v", err)
	}
	if req.Image != "" {
		if _, err := imagepin.Parse(req.Image, false); err != nil {
			return fieldErr("image", "%v", err)
		}
	}
	if err := validateEnv(req.Env, req.UnsetEnv); err != nil {
		return err
	}
	if req.Image == "" && len(req.Env) == 0 && len(req.UnsetEnv) == 0 && req.SecretsVersion == 0 && !req.Restart {
		return fieldErr("change", "nothing to change: give an image, env to set or unset, a secrets version, or a restart")
	}
	if req.Selector.Container != "" {
		switch {
		case req.Image == "":
			return fieldErr("container", "a container's image is moved only with an image: Fly reports no digest per container to keep")
		case len(req.Env) > 0 || len(req.UnsetEnv) > 0:
			return fieldErr("container", "env changes apply to config.env, not to a container's env: not with a container")
		}
	}
	if len(req.Selector.Apps) == 0 && req.Selector.Org == "" {
		return fieldErr("apps", "name the apps (or an org with a prefix or regex)")
	}
	if _, err := MaxUnavailable(req.MaxUnavailable, 1); err != nil {
		return fieldErr("max_unavailable", "%v", err)
	}
	if req.Canary < 0 {
		return fieldErr("canary", "%d: want 0 or more", req.Canary)
	}
	if req.FailureThreshold < 0 {
		return fieldErr("failure_threshold", "%d: want 0 or more", req.FailureThreshold)
	}
	if d := req.DeadlineOverride; d != 0 && (d < policy.MinWait || d > policy.MaxWait) {
		return fieldErr("deadline", "%s: want %s to %s", d, policy.MinWait, policy.MaxWait)
	}
	if iw := req.IdleWaitOverride; iw != nil && (*iw < 0 || *iw > policy.MaxWait) {
		return fieldErr("idle_wait", "%s: want 0 to %s", *iw, policy.MaxWait)
	}
	if b := req.CanaryBakeOverride; b != nil && (*b < 0 || *b > policy.MaxCanaryBake) {
		return fieldErr("canary_bake", "%s: want 0 to %s", *b, policy.MaxCanaryBake)
	}
	if u := req.Undrainable; u != "" {
		if _, err := policy.ParseUndrainable(string(u)); err != nil {
			return fieldErr("undrainable", "%v", err)
		}
	}
	if strings.TrimSpace(req.RequestedBy) == "" {
		return fieldErr("requested_by", "empty: say who asks")
	}
	return nil
}

func validateEnv(set map[string]string, unset []string) error {
	if len(set)+len(unset) > MaxEnvKeys {
		return fieldErr("env", "%d keys: at most %d in one change", len(set)+len(unset), MaxEnvKeys)
	}
	for _, k := range slices.Sorted(maps.Keys(set)) {
		if err := checkEnvName("env", k); err != nil {
			return err
		}
		if len(set[k]) > MaxEnvValueLen {
			return fieldErr("env", "%s: value of %d bytes, at most %d", k, len(set[k]), MaxEnvValueLen)
		}
		if strings.ContainsRune(set[k], 0) {
			return fieldErr("env", "%s: value holds a NUL byte", k)
		}
	}
	seen := map[string]bool{}
	for _, k := range unset {
		if err := checkEnvName("unset_env", k); err != nil {
			return err
		}
		if _, ok := set[k]; ok {
			return fieldErr("unset_env", "%s is both set and unset", k)
		}
		if seen[k] {
			return fieldErr("unset_env", "%s listed twice", k)
		}
		seen[k] = true
	}
	return nil
}

func checkEnvName(field, k string) error {
	if len(k) > maxEnvNameLen || !envName.MatchString(k) {
		shown := k
		if len(shown) > 40 {
			shown = shown[:40] + "…"
		}
		return fieldErr(field, "%q is not an env name (want [A-Za-z_][A-Za-z0-9_]*)", shown)
	}
	if why := reservedEnv(k); why != "" {
		return fieldErr(field, "%s %s: a change may not set or unset it", k, why)
	}
	return nil
}

// ChangeSummary is a run's change as the audit shows it: names only
// (store.Change, which the faces over the store read too).
type ChangeSummary = store.Change

// SummaryOf is req's change, names only.
func SummaryOf(req RunRequest) ChangeSummary {
	return ChangeSummary{Image: req.Image, EnvSet: slices.Sorted(maps.Keys(req.Env)), EnvUnset: slices.Sorted(slices.Values(req.UnsetEnv)),
		SecretsVersion: req.SecretsVersion, Restart: req.Restart}
}

// RunChange is a recorded run's change, names only.
func RunChange(r store.Run) ChangeSummary { return r.Change() }

// runEnvAAD and envBeforeAAD name the place a sealed value belongs.
func runEnvAAD(runID int64, key string) string { return fmt.Sprintf("run/%d/env/%s", runID, key) }
func envBeforeAAD(id int64) string             { return fmt.Sprintf("migration/%d/env_before", id) }

// sealEnv seals the values a run sets, each for its place.
func (o *Orchestrator) sealEnv(runID int64, env map[string]string) (map[string]store.Sealed, error) {
	if len(env) == 0 {
		return nil, nil
	}
	if o.cfg.Sealer == nil {
		return nil, ErrNoSealKey
	}
	out := make(map[string]store.Sealed, len(env))
	for k, v := range env {
		s, err := o.cfg.Sealer.Seal([]byte(v), runEnvAAD(runID, k))
		if err != nil {
			return nil, fmt.Errorf("seal env %s: %w", k, err)
		}
		out[k] = store.Sealed{KeyID: s.KeyID, Box: s.Box}
	}
	return out, nil
}

// planWant is what a machine must hold to be up to date, as far as the
// plan can tell from a listing (the image and the env; a secrets version
// or a restart is judged when the machine's turn comes).
type planWant struct {
	image string // "" keeps each machine's image
	env   flymachines.EnvChange
	more  bool // a secrets version or a restart: never up to date at plan
}

func wantOf(req RunRequest) planWant {
	return planWant{image: req.Image, env: flymachines.EnvChange{Set: req.Env, Unset: req.UnsetEnv},
		more: req.SecretsVersion > 0 || req.Restart}
}

// upToDate: the machine, showing image, holds the change.
func (w planWant) upToDate(image string, env map[string]string) bool {
	return !w.more && (w.image == "" || image == w.image) && flymachines.HasEnv(env, w.env)
}

// change is a run's change as one execution of a machine's step uses it,
// values opened in memory.
type change struct {
	summary ChangeSummary
	env     flymachines.EnvChange
}

// changeError: the run's change cannot be used (no seal key, another
// key, a value gone): permanent for the machine, unlike a database error.
type changeError struct{ err error }

func (e *changeError) Error() string { return e.err.Error() }
func (e *changeError) Unwrap() error { return e.err }

// change loads (once per execution) the run's change with its env values
// opened; a *changeError when they cannot be opened.
func (s *step) change(ctx context.Context) (*change, error) {
	if s.chg != nil {
		return s.chg, nil
	}
	r := s.w.Run
	c := &change{summary: RunChange(r), env: flymachines.EnvChange{Unset: r.EnvUnset}}
	if len(r.EnvSet) > 0 {
		sealed, err := s.o.store.Q().RunEnv(ctx, r.ID)
		if err != nil {
			return nil, err
		}
		if s.o.cfg.Sealer == nil {
			return nil, &changeError{ErrNoSealKey}
		}
		c.env.Set = make(map[string]string, len(r.EnvSet))
		for _, k := range r.EnvSet {
			sv, ok := sealed[k]
			if !ok {
				return nil, &changeError{fmt.Errorf("the sealed value of env %s is gone (the run ended?)", k)}
			}
			v, err := s.o.cfg.Sealer.Open(seal.Sealed{KeyID: sv.KeyID, Box: sv.Box}, runEnvAAD(r.ID, k))
			if err != nil {
				return nil, &changeError{fmt.Errorf("open the sealed value of env %s: %w", k, err)}
			}
			c.env.Set[k] = string(v)
		}
	}
	s.chg = c
	return c, nil
}

// keepsImage: the run names no image and the recreate carries none, so
// the machine keeps the digest it runs (ToImage is its image_ref).
func (s *step) keepsImage() bool {
	return s.w.Run.Image == "" && (s.m.ToImage == "" || s.m.ToImage == s.m.FromImageRef)
}

// judgeChange resolves what the update will send for a machine read as
// mach (showing image) and ends the machine when it needs nothing:
//   - the target image: the run's; or, for a run without one, the fleet
//     image a combined recreate carries, else the digest the machine runs
//     (image_ref's full reference; a machine without a digest is refused:
//     a tag may have moved);
//   - up to date against the whole change: skipped_up_to_date.
//
// stop=false lets ready go on.
func (s *step) judgeChange(ctx context.Context, mach flymachines.Machine, image string) (n next, stop bool, err error) {
	run := s.w.Run
	keeps := false // the machine keeps the digest it runs
	if run.Image == "" {
		target := ""
		carried, ok, err := s.o.store.Q().CarriedBy(ctx, s.m.ID)
		switch {
		case err != nil:
			return next{}, true, err
		case ok:
			target = carried.Image
		case mach.ImageRef.Digest != "" && mach.ImageRef.Repository != "":
			keeps = true
			target = mach.ImageRef.Full()
		default:
			n, err = s.finish(ctx, store.OutcomeFailed, "", "refused: Fly reports no image digest (image_ref) for what runs; "+
				"a change without an image keeps the digest that runs and never sends a tag that may have moved")
			return n, true, err
		}
		if target != s.m.ToImage {
			if err := s.o.store.Q().SetTargetImage(ctx, s.m.ID, target); err != nil {
				return next{}, true, err
			}
			s.m.ToImage = target
		}
	}
	c, err := s.change(ctx)
	var ce *changeError
	if errors.As(err, &ce) {
		n, err = s.finish(ctx, store.OutcomeFailed, "", fmt.Sprintf("the run's change: %v", err))
		return n, true, err
	}
	if err != nil {
		return next{}, true, err
	}
	if image != s.m.ToImage && !keeps {
		return next{}, false, nil
	}
	if !flymachines.HasEnv(mach.Env, c.env) || run.Restart {
		return next{}, false, nil
	}
	if want := run.SecretsVersion; want > 0 {
		proven, err := s.o.store.Q().ProvenSecretsVersion(ctx, s.m.App, s.m.MachineID, mach.InstanceID)
		if err != nil {
			return next{}, true, err
		}
		if proven < want {
			return next{}, false, nil
		}
	}
	n, err = s.finish(ctx, store.OutcomeSkippedUpToDate, "", "")
	return n, true, err
}

// changeDetail is the run's change for a transition's event (names only),
// with the image this machine's update sends.
func (s *step) changeDetail() map[string]any {
	d := RunChange(s.w.Run).Detail()
	d["to_image"] = s.m.ToImage
	if s.keepsImage() {
		d["keeps_image"] = true
	}
	return d
}

// changeOptions are the update's options for the change beyond the image,
// and the secrets version it sends (at least the one `secret sync` wrote,
// synced). Before the update is sent, what it will change is recorded:
// the keys of config.env it touches as they are now (sealed), and the
// secrets version.
func (s *step) changeOptions(ctx context.Context, synced uint64) ([]flymachines.UpdateOption, uint64, error) {
	run := s.w.Run
	secrets := max(synced, run.SecretsVersion)
	if !RunChange(run).BeyondImage() && run.Image != "" {
		// An image alone: the update is as it always was; what it sends
		// of app secrets is recorded (it proves the version later).
		if secrets > 0 {
			if err := s.o.store.Q().RecordChangeBefore(ctx, s.m.ID, nil, secrets); err != nil {
				return nil, 0, err
			}
		}
		return nil, secrets, nil
	}
	c, err := s.change(ctx)
	if err != nil {
		return nil, 0, err
	}
	var before *store.Sealed
	if !c.env.Empty() {
		mach, err := s.o.fly.GetMachine(ctx, s.m.App, s.m.MachineID)
		if err != nil {
			return nil, 0, err // a Fly error: the caller tells transient from permanent
		}
		plain, err := json.Marshal(map[string]*string(flymachines.Before(mach.Env, c.env)))
		if err != nil {
			return nil, 0, err
		}
		if s.o.cfg.Sealer == nil {
			return nil, 0, &changeError{ErrNoSealKey}
		}
		sv, err := s.o.cfg.Sealer.Seal(plain, envBeforeAAD(s.m.ID))
		if err != nil {
			return nil, 0, &changeError{err}
		}
		before = &store.Sealed{KeyID: sv.KeyID, Box: sv.Box}
	}
	if err := s.o.store.Q().RecordChangeBefore(ctx, s.m.ID, before, secrets); err != nil {
		return nil, 0, err
	}
	// A config that already holds the change (a restart, a secrets
	// version, an env already set) is updated all the same while the
	// machine runs the instance read under the lease.
	opts := []flymachines.UpdateOption{flymachines.WithFromInstance(s.m.FromInstanceID)}
	if !c.env.Empty() {
		opts = append(opts, flymachines.WithEnv(c.env))
	}
	return opts, secrets, nil
}

// secretsFrom adds to an update's event the app secrets version the
// machine had before, as far as migrator knows it (Fly shows no machine's
// version: the highest an update of migrator sent to the instance it
// replaced; absent when unknown), so the audit reads "from → to".
func (s *step) secretsFrom(ctx context.Context, detail map[string]any) {
	v, err := s.o.store.Q().ProvenSecretsVersion(ctx, s.m.App, s.m.MachineID, s.m.FromInstanceID)
	if err != nil {
		s.log.Warn("read the secrets version before the update", "error", err)
		return
	}
	if v > 0 {
		detail["secrets_version_from"] = v
	}
}

// envApplied: the machine's config holds the run's env change (verify's
// "ours" with the instance and the image).
func (s *step) envApplied(ctx context.Context, m flymachines.Machine) bool {
	if len(s.w.Run.EnvSet) == 0 && len(s.w.Run.EnvUnset) == 0 {
		return true
	}
	c, err := s.change(ctx)
	if err != nil {
		s.log.Warn("read the run's change", "error", err)
		return true // the update carried it: judged by instance and image
	}
	return flymachines.HasEnv(m.Env, c.env)
}

// unrestorable: what a rollback must put back in config.env cannot be
// read (not recorded, or the seal key cannot open it): permanent, unlike a
// database error.
type unrestorable struct{ why string }

func (e *unrestorable) Error() string { return e.why }

// envRestore is the env change a rollback sends: the touched keys as they
// were before the update (empty when the change touched no env).
func (s *step) envRestore(ctx context.Context) (flymachines.EnvChange, error) {
	if len(s.w.Run.EnvSet) == 0 && len(s.w.Run.EnvUnset) == 0 {
		return flymachines.EnvChange{}, nil
	}
	rec, ok, err := s.o.store.Q().ChangeOf(ctx, s.m.ID)
	if err != nil {
		return flymachines.EnvChange{}, err
	}
	if !ok || rec.EnvBefore == nil {
		return flymachines.EnvChange{}, &unrestorable{"the env before the update was not recorded (or is gone with the run)"}
	}
	if s.o.cfg.Sealer == nil {
		return flymachines.EnvChange{}, &unrestorable{ErrNoSealKey.Error()}
	}
	plain, err := s.o.cfg.Sealer.Open(seal.Sealed{KeyID: rec.EnvBefore.KeyID, Box: rec.EnvBefore.Box}, envBeforeAAD(s.m.ID))
	if err != nil {
		return flymachines.EnvChange{}, &unrestorable{"open the env before the update: " + err.Error()}
	}
	var before map[string]*string
	if err := json.Unmarshal(plain, &before); err != nil {
		return flymachines.EnvChange{}, &unrestorable{"the env before the update does not decode"}
	}
	return flymachines.EnvBefore(before).Restore(), nil
}

// envBack: the machine's config.env holds again what the touched keys
// held before the update (always true for a change without env).
func (s *step) envBack(m flymachines.Machine) bool {
	return s.restoreEnv == nil || flymachines.HasEnv(m.Env, *s.restoreEnv)
}

// loadRestore loads, once per execution, what a rollback puts back in
// config.env: an *unrestorable error when it cannot be read, else a
// database error to retry.
func (s *step) loadRestore(ctx context.Context) error {
	if s.restoreEnv != nil || len(s.w.Run.EnvSet) == 0 && len(s.w.Run.EnvUnset) == 0 {
		return nil
	}
	c, err := s.envRestore(ctx)
	if err != nil {
		return err
	}
	s.restoreEnv = &c
	return nil
}

// rollsBack reports whether the change has something to put back: an
// image other than what ran, or env keys. A restart or a secrets version
// alone changed nothing in the config.
func (s *step) rollsBack() bool {
	imageMoved := s.m.ToImage != "" && s.m.ToImage != s.m.FromImage && s.m.ToImage != s.m.FromImageRef
	return imageMoved || len(s.w.Run.EnvSet) > 0 || len(s.w.Run.EnvUnset) > 0
}

// nothingToRollBack ends, instead of a rollback, a machine whose change
// had nothing to put back: failed, its drain cancelled (failAfterUpdate),
// with why; on-call hears of it as an agent that is not serving.
func (s *step) nothingToRollBack(ctx context.Context, signal, reason string) (n next, stop bool, err error) {
	if s.rollsBack() {
		return next{}, false, nil
	}
	s.o.obs.RollbackStarted(phaseOf(s.m.State), signal)
	s.m.DecidingSignal = signal
	what := "the restart"
	if !s.w.Run.Restart {
		what = "picking up app secrets"
	}
	n, err = s.failAfterUpdate(ctx, fmt.Sprintf("%s; nothing to roll back after %s (the config did not change): check the agent", reason, what))
	return n, true, err
}

// rollbackNotes are what a rollback adds to its event: the env keys put
// back, and that app secrets picked up stay (Fly keeps only the newest
// values).
func (s *step) rollbackNotes(ctx context.Context, detail map[string]any) map[string]any {
	if detail == nil {
		detail = map[string]any{}
	}
	run := s.w.Run
	if len(run.EnvSet) > 0 || len(run.EnvUnset) > 0 {
		detail["env_restored"] = append(slices.Clone(run.EnvSet), run.EnvUnset...)
	}
	if run.SecretsVersion > 0 {
		sent := run.SecretsVersion
		if rec, ok, err := s.o.store.Q().ChangeOf(ctx, s.m.ID); err == nil && ok && rec.SecretsVersion > 0 {
			sent = rec.SecretsVersion
		}
		detail["secrets_not_restored"] = sent
		detail["secrets_note"] = fmt.Sprintf("app secrets stay at version %d or newer: Fly keeps only the newest values, a rollback cannot put them back", sent)
	}
	return detail
}

// ---- the lane ----------------------------------------------------------------

// laneOf is the budget lane runs of cause take.
func (o *Orchestrator) laneOf(cause policy.Cause) string {
	if o.pol.Lane().InLane(cause) {
		return store.LaneCustomer
	}
	return store.LaneFleet
}
