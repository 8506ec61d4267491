package store_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hermes-cloud/migrator/store"
)

func TestSecretSyncs(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	q := s.Q()
	if _, ok, err := q.LastSecretSet(ctx, "hermes-agent-1", "S"); err != nil || ok {
		t.Fatalf("LastSecretSet on an empty table: %v %v", ok, err)
	}
	if v, err := q.AppSecretsVersion(ctx, "hermes-agent-1"); err != nil || v != 0 {
		t.Fatalf("AppSecretsVersion of an app never written: %d %v", v, err)
	}
	for _, sync := range []store.SecretSync{
		{App: "hermes-agent-1", SecretName: "S", KeyID: "k1", Result: store.SecretSet, FlyDigest: "d1", SecretsVersion: 3, RequestedBy: "ops"},
		{App: "hermes-agent-1", SecretName: "S", KeyID: "k2", Result: store.SecretFailed, RequestedBy: "ops", Error: "HTTP 500"},
		{App: "hermes-agent-2", SecretName: "S", KeyID: "k1", Result: store.SecretSet, FlyDigest: "d2", SecretsVersion: 1, RequestedBy: "ops"},
	} {
		err := s.InTx(ctx, func(q *store.Q, _ pgx.Tx) error {
			_, err := q.RecordSecretSync(ctx, sync, store.Event{Kind: "secret." + sync.Result, Target: sync.App})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	got, ok, err := q.LastSecretSet(ctx, "hermes-agent-1", "S")
	if err != nil || !ok || got.KeyID != "k1" || got.FlyDigest != "d1" || got.SecretsVersion != 3 || got.RequestedBy != "ops" || got.At.IsZero() {
		t.Fatalf("LastSecretSet: %+v %v %v (a failed attempt must not count as the last set)", got, ok, err)
	}
	if v, err := q.AppSecretsVersion(ctx, "hermes-agent-1"); err != nil || v != 3 {
		t.Fatalf("AppSecretsVersion = %d, %v; want 3", v, err)
	}
	var events int
	if err := s.Pool().QueryRow(ctx, `SELECT count(*) FROM events WHERE kind LIKE 'secret.%'`).Scan(&events); err != nil || events != 3 {
		t.Fatalf("%d secret events, %v", events, err)
	}
	// The schema refuses a set without its version.
	_, err = q.RecordSecretSync(ctx, store.SecretSync{App: "a", SecretName: "S", KeyID: "k", Result: store.SecretSet, RequestedBy: "ops"})
	if err != nil {
		t.Fatalf("version 0 is a version: %v", err)
	}
	_, err = s.Pool().Exec(ctx, `INSERT INTO secret_syncs (app, secret_name, key_id, result, requested_by) VALUES ('a','S','k','set','ops')`)
	if err == nil || !strings.Contains(err.Error(), "check") {
		t.Errorf("a set without a secrets version was accepted: %v", err)
	}
}

// TestUndrainableRoundTrip: the run's override, the drain's decision, the
// outcome 'undrainable' (allowed by the extended check) and its status.
func TestUndrainableRoundTrip(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	run := sampleRun()
	run.Undrainable = "recreate"
	r, _, err := s.Q().CreateRun(ctx, run, sampleMachines())
	if err != nil {
		t.Fatal(err)
	}
	if r.Undrainable != "recreate" {
		t.Fatalf("run undrainable %q", r.Undrainable)
	}
	ms, _ := s.Q().ListMigrations(ctx, r.ID)
	w, err := s.Q().LoadMachineWork(ctx, ms[0].ID)
	if err != nil || w.Run.Undrainable != "recreate" {
		t.Fatalf("LoadMachineWork: %v run %+v", err, w.Run)
	}
	now := time.Now().UTC()
	m := w.Migration
	m.State = store.StateUpdating
	d := &store.Drain{MigrationID: m.ID, PolicyRule: "r", PolicyVersion: "p", OnDeadline: "force", DecidedAt: now,
		DeadlineAt: now, Undrainable: "recreate", UndrainableStatus: 404, Outcome: store.DrainUndrainable}
	if err := s.Q().SaveStep(ctx, &m, d, nil); err != nil {
		t.Fatal(err)
	}
	w, err = s.Q().LoadMachineWork(ctx, m.ID)
	if err != nil || w.Drain == nil || w.Drain.Undrainable != "recreate" || w.Drain.UndrainableStatus != 404 || w.Drain.Outcome != store.DrainUndrainable {
		t.Fatalf("drain %+v, %v", w.Drain, err)
	}
	// A run without the override reads as empty; a drain without a decision as fail.
	plain := sampleRun()
	plain.IdempotencyKey = "tick-2"
	r2, _, err := s.Q().CreateRun(ctx, plain, sampleMachines())
	if err != nil || r2.Undrainable != "" {
		t.Fatalf("plain run: %v %q", err, r2.Undrainable)
	}
	var h string
	if err := s.Pool().QueryRow(ctx, `SELECT drain_outcome FROM drain_history WHERE migration_id = $1`, m.ID).Scan(&h); err != nil || h != "undrainable" {
		t.Fatalf("drain_history drain_outcome %q, %v", h, err)
	}
}
