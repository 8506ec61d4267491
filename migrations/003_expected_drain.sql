-- The drain wait a machine was expected to need when its run was planned:
-- the mean of its last few drain waits (NULL when it had none). Plans order
-- machines longest expected drain first, so the run's longest drains start
-- early instead of setting the makespan from the back of the queue; this
-- column keeps the estimate the order was built from, for the audit and for
-- comparing it with the wait that followed.
ALTER TABLE machine_migrations ADD COLUMN expected_drain interval;
