-- Indexes that keep the budget-slot statements (store/slots.go) cheap when a
-- run has tens of thousands of machines and the table holds every past run.
-- The LATERAL of FillSlots is served by 001's machine_migrations_pending_idx
-- (run_id, canary DESC, seq) WHERE state = 'pending'.
--
-- FillSlots' canary gate: does this run still have a canary that has not
-- migrated? Only those canaries are indexed (a few per run), so the answer is
-- one probe instead of a walk over the run's rows (or the whole table).
CREATE INDEX machine_migrations_canary_open_idx ON machine_migrations (run_id)
    WHERE canary AND outcome IS DISTINCT FROM 'migrated';

-- SettleRun counts a run's failures, and its canary failures, from the
-- failed and rolled-back rows only (index-only), not from every row of the run.
CREATE INDEX machine_migrations_failed_idx ON machine_migrations (run_id, canary)
    WHERE outcome IN ('failed', 'rolled_back');
