// Package bench is the fleet-scale benchmark: a simulated fleet
// (internal/testkit/fleetsim, APISimTime), a real PostgreSQL and one orchestrator
// replica with its River workers, all on one scaled clock, moving every
// machine to a new image while everything that costs is counted. `migrator
// bench` (make bench) runs it at 2,000 and 10,000 machines, and the activity
// scenario, and writes bench/results.md (MergeMarkdown folds a run of some
// scenarios into an earlier file); BenchmarkFleet runs a small fleet under
// `go test -bench`.
//
// # Model
//
// Run builds a scenario from Config: N machines, a fleet budget B (the
// orchestrator's FleetCap and the run's max_unavailable), a policy deadline
// long enough that no drain is forced, and one turn of agent work per
// machine whose length d_i is drawn (log-normal, heavy-tailed) from the
// seed and the machine's name. By default the turn starts the moment the
// machine's drain begins (a wrapper around the gateway client starts it in
// the simulator), so every drain waits d_i whatever the schedule, and the
// jobs the run did are the jobs the baselines are computed over.
//
// A machine's d_i differs from one rollout to the next but keeps a part
// that belongs to the machine (TurnPersistence, ρ: the share of the
// variance of log d_i that repeats). With HistoryRounds, the fleet is
// rolled that many times before the measured run, so the measured run is
// planned from drain history (longest expected drain first), as every run
// of a fleet that is updated daily is; the first history round is the
// same run without history, and its makespan is reported too.
//
// The run's own rows give, per machine in plan order, d_i (drain start to
// quiescence) and r_i (recreate to done), p_i = d_i + r_i, all on the
// simulated timeline; from them LowerBound, WaveMakespan (fixed batches of
// B, each waiting for its slowest, as batch-based instance refreshes do)
// and GreedyMakespan (refill with no overhead) are pure arithmetic. The
// measured makespan runs from CreateRun to the last machine done.
// StudySeeds repeats the zero-overhead schedules over many draws of the
// same distribution, to separate what the draw costs from what the
// orchestrator costs.
//
// # Activity
//
// With Config.Activity the simulated agents talk (fleetsim's activity
// model: per-agent Poisson turns at log-normal rates, heavy-tailed turns,
// a few multi-hour tasks) and the benchmark adds no turn of its own: a
// drain waits for whatever the users are doing. The result then holds the
// simulator's turns refused (arrived while draining) and interrupted (in
// flight at the recreate) over the run, the agent-time spent draining in
// all and per agent (p99, max), and, over the migrated machines alone, the
// makespan from CreateRun to the last one done against LB_idle =
// max(max_i (t_idle_i + r_i), Σ r_i / B), r_i being recreate + verify and
// t_idle_i the first moment from the run's start at which agent i has
// nothing in flight and no turn arrives for the watcher's delay and a
// second (the simulator replays its activity trace: fleetsim.IdleMoment),
// so a drain begun then could end in the recreate without refusing a turn
// (LB_r, the same without t_idle_i, is kept for comparison); the same bound
// counted from each agent's first look shows what the budget's order cost
// apart from noticing; and each refused turn placed in its drain (while it
// waited for a turn in flight, before or after the read that found it
// quiescent). `migrator bench --scenario activity` runs it three times
// from the same state (same seed, fresh simulator and database each) with
// an auto-update run: with IdleWait 0 and no idle_quiet_for (the drain
// begins as the machine gets its slot), idle first without idle_quiet_for
// (Config.IdleQuietFor 0), and with the policy's idle wait and quiet (idle
// first), and reports them side by side (Report.AtOnce,
// Report.IdleFirstNoQuiet, Report.IdleFirst), with the background
// delegations the agents leave (fleetsim's Activity.BackgroundShare) that
// each cut off.
//
// # Replicas
//
// RunReplicas moves one fleet (10,000 machines by default, the drain model
// of the fleet scenario started by the simulator itself:
// fleetsim.DrainTurns) with real `migrator serve` processes, each with its
// own pool and River client, against one PostgreSQL (pg_stat_statements
// preloaded) and one `migrator fleetsim` process, so each process's CPU and
// RSS are its own (/proc): once per replica count, then with the most
// replicas and River's leader SIGKILLed, not restarted, at a share of the
// machines done. The run is planned and created in this process, as `run
// create` does. It reports the schedule figures as above, SQL statements
// per machine (pg_stat_statements, less the benchmark's own), connections
// (pg_stat_activity by application name), each replica's RSS, CPU and
// share of the work (its log's updates, River's attempted_by), updates per
// machine from the simulator (exactly once), the longest any machine went
// without a request from migrator (the simulator's per-machine timeline),
// and a heap profile of one replica at full load (MIGRATOR_PPROF_ADDR).
// River's crash-safety timers (job timeout, rescue-after, its rescuer's
// period, leader election) run on the wall clock at serve's settings, so
// the stand-still a kill causes is measured in wall time; on the scaled
// timeline it is stretched by the time scale, which makes the kill run's
// makespan a pessimistic figure.
//
// # Counters
//
//   - SQL: StatementCounter, a pgx tracer on the pool River shares, labels
//     every statement by its source (store function, River query, who
//     opened the transaction); the sampler keeps the rate during the
//     plateau, the time in which most drains wait at once.
//   - Fly and gateway calls: the simulator's request counts by route, and
//     the audit log's calls by operation.
//   - CPU: getrusage of the process, less the simulator handlers' own CPU
//     (thread CPU clock, the handler's goroutine locked to its thread); the
//     PostgreSQL server's CPU from /proc when the benchmark started it.
//   - Memory: the process's resident-set peak (VmHWM, reset per scenario).
//   - The simulator's rate-limit violations and peak of disrupted machines.
//
// The in-process scenarios run in one process so that one clock drives
// it; River's
// internal timers are wall time, so its fetch poll and the fill period are
// scaled explicitly, and at a time scale above 1 its batching is a little
// kinder than in production (the report says so).
//
// # Files
//
//	config.go          Config, its defaults and validation
//	bench.go           Run: the in-process scenario from set-up to figures; history rounds
//	database.go        the scenario's PostgreSQL, its schema, the server's clock skew
//	turns.go           the drain model: a turn started as each drain begins (drainTurns)
//	sampler.go         during a run: counters, the plateau, the heap at half-way
//	collect.go         after a run: d_i, r_i, bounds and makespans, the seed study
//	idle.go            the activity scenario's LB_idle and the refused turns
//	result.go          Result and the figures derived from it
//	schedule.go        lower bound, wave, greedy and LPT makespans; StudySeeds
//	sqltrace.go        StatementCounter: SQL statements labelled by their source
//	procstat.go        CPU and memory from getrusage and /proc; the simulator's CPU meter
//	heapprof.go        heap profiles (this process's, or a replica's over HTTP)
//	logcount.go        warnings and errors the workers logged
//	replicas.go        RunReplicas: its config, what a run reports, one run
//	replicas_procs.go  the fleetsim and serve processes of a replicas run
//	replicas_watch.go  watching a replicas run, the kill, pg_stat_statements
//	report.go, replicas_report.go   Report: targets and bench/results.md
//	merge.go           MergeMarkdown: a re-run of some scenarios into an earlier file
package bench
