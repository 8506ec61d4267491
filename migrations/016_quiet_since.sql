-- Work Hermes does not count (background delegations, background
-- processes) is not in active_agents, so an idle moment for a decision with
-- idle_quiet_for needs the agent to have shown nothing in flight for that
-- long: quiet_since is when the current run of looks with nothing in flight
-- began (null: the last look found work in flight, or none was read).
ALTER TABLE machine_migrations ADD COLUMN quiet_since timestamptz;
