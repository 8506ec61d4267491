-- Indexes for the drain_history audit queries (`migrator history`), which
-- read newest first (ORDER BY created_at DESC) under one filter or a few.
-- 001 already serves --app, --machine, --since/--until and the cause join;
-- these serve the rest without walking every machine migration:
--
-- --run: (run_id, state) does not give created_at order, so on a large table
-- the planner walked the created_at index and filtered by run.
CREATE INDEX machine_migrations_run_created_idx ON machine_migrations (run_id, created_at);

-- --outcome: rare outcomes (failed, rolled_back) would otherwise mean a walk
-- of the whole created_at index to find the few.
CREATE INDEX machine_migrations_outcome_created_idx ON machine_migrations (outcome, created_at) WHERE outcome IS NOT NULL;

-- --forced: forced drains are the exception an audit looks for.
CREATE INDEX drains_forced_idx ON drains (migration_id) WHERE outcome = 'deadline_forced';
