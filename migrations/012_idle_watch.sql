-- A machine waiting for an idle moment of its agent looks at it on its own
-- River job (snoozed until its next look), holding no budget slot: the
-- machine is pending with idle_watch set, and FillSlots leaves it alone
-- (its job, not a freed slot or the fill tick, decides when it looks). Its
-- job takes a slot for it the moment the agent is idle (store.ClaimSlot);
-- with none free, idle_watch is cleared and it waits for one in plan order
-- like any pending machine. The fill job re-inserts the job of a watching
-- machine whose look is overdue (its job was lost).
ALTER TABLE machine_migrations ADD COLUMN idle_watch boolean NOT NULL DEFAULT false;
CREATE INDEX machine_migrations_idle_watch_idx ON machine_migrations (not_before) WHERE idle_watch;
