package bench

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/store"
)

// Watching a replicas run: the processes and connections sampled until
// the run is over, River's leader killed and a replica's heap read on cue;
// then what PostgreSQL counted (pg_stat_statements, executions by client).

// replicaWatch samples a run until it is over, and kills and profiles on
// cue.
type replicaWatch struct {
	cfg           ReplicasConfig
	run           *ReplicaRun
	reps          []*replica
	db            *pgxpool.Pool
	dbname        string
	runID         int64
	clk           *clock.Scaled
	kill, profile bool
	wall0         time.Time
	sim0          time.Time
	log           *slog.Logger
	simPID        int

	connSum float64
	samples int
}

func (w *replicaWatch) wait(ctx context.Context) (store.Run, error) {
	q := store.NewQ(w.db)
	tick := time.NewTicker(w.cfg.SampleEvery)
	defer tick.Stop()
	lastLog := time.Now()
	n := w.cfg.Machines
	for {
		select {
		case <-ctx.Done():
			return store.Run{}, ctx.Err()
		case <-tick.C:
		}
		for _, r := range w.reps {
			r.sample()
		}
		if err := w.sampleConns(ctx); err != nil {
			return store.Run{}, err
		}
		var done int
		var state, reason string
		if err := w.db.QueryRow(ctx, `SELECT (SELECT count(*) FROM machine_migrations WHERE run_id = $1 AND state = 'done'),
			state, state_reason FROM runs WHERE id = $1`, w.runID).Scan(&done, &state, &reason); err != nil {
			return store.Run{}, fmt.Errorf("read run %d: %w", w.runID, err)
		}
		if w.kill && w.run.Kill == nil && float64(done) >= w.cfg.KillAt*float64(n) {
			if err := w.killLeader(ctx, done); err != nil {
				return store.Run{}, err
			}
		}
		if w.profile && w.run.Heap == nil && float64(done) >= w.cfg.ProfileAt*float64(n) {
			h, err := readHeapProfile(ctx, w.reps[0].pprof)
			if err != nil {
				return store.Run{}, fmt.Errorf("profile replica 1: %w", err)
			}
			h.Done, h.RSS = done, procRSS(w.reps[0].cmd.Process.Pid)
			w.run.Heap = &h
		}
		if s := store.RunState(state); store.RunTerminal(s) || s == store.RunPaused {
			if w.samples > 0 {
				w.run.ConnsMean = w.connSum / float64(w.samples)
			}
			return q.GetRun(ctx, w.runID)
		}
		if time.Since(w.wall0) > w.cfg.Timeout {
			return store.Run{}, fmt.Errorf("run %d still %s after %s of wall time: %d of %d done", w.runID, state, w.cfg.Timeout, done, n)
		}
		if time.Since(lastLog) >= 10*time.Second {
			lastLog = time.Now()
			w.log.Info("progress", "done", done, "of", n, "conns", w.run.ConnsPeak)
		}
	}
}

// sampleConns counts the workers' connections to the run's database (the
// benchmark's own are named migrator-bench*).
func (w *replicaWatch) sampleConns(ctx context.Context) error {
	rows, err := w.db.Query(ctx, `SELECT application_name, count(*) FROM pg_stat_activity
		WHERE datname = $1 AND backend_type = 'client backend' GROUP BY 1`, w.dbname)
	if err != nil {
		return fmt.Errorf("sample connections: %w", err)
	}
	defer rows.Close()
	total := 0
	for rows.Next() {
		var name string
		var c int
		if err := rows.Scan(&name, &c); err != nil {
			return err
		}
		if i, ok := strings.CutPrefix(name, "migrator-replica-"); ok {
			if k, err := strconv.Atoi(i); err == nil && k >= 1 && k <= len(w.reps) {
				w.reps[k-1].conns = max(w.reps[k-1].conns, c)
				total += c
			}
		}
	}
	w.run.ConnsPeak = max(w.run.ConnsPeak, total)
	w.connSum += float64(total)
	w.samples++
	return rows.Err()
}

// killLeader SIGKILLs River's leader (the harder case: a new leader must be
// elected before anyone rescues its jobs, and the periodic fill moves).
func (w *replicaWatch) killLeader(ctx context.Context, done int) error {
	var leader string
	if err := w.db.QueryRow(ctx, `SELECT leader_id FROM river_leader LIMIT 1`).Scan(&leader); err != nil {
		return fmt.Errorf("read River's leader: %w", err)
	}
	k := &Kill{Replica: -1, Done: done}
	for i, r := range w.reps {
		if r.id == leader {
			k.Replica, k.Leader = i, true
		}
	}
	if k.Replica < 0 {
		k.Replica = len(w.reps) - 1 // the leader is not one of ours (cannot happen): kill the last
	}
	r := w.reps[k.Replica]
	r.sample()
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
	r.killed = true
	k.AtWall, k.At = time.Since(w.wall0), w.clk.Now().Sub(w.sim0)
	if err := w.db.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state = 'running' AND kind = 'machine_migration'
		AND attempted_by[array_length(attempted_by, 1)] = $1`, r.id).Scan(&k.RunningJobs); err != nil {
		return fmt.Errorf("count the killed replica's jobs: %w", err)
	}
	w.run.Kill = k
	w.log.Info("killed a replica", "replica", k.Replica+1, "leader", k.Leader, "done", done, "running_jobs", k.RunningJobs)
	return nil
}

// countStatements reads pg_stat_statements for the run's database: the
// top-level statements less the benchmark's own (monitor), and those run
// inside functions and triggers.
func (r *ReplicaRun) countStatements(ctx context.Context, db *pgxpool.Pool, dbname string, monitor int64) error {
	rows, err := db.Query(ctx, `SELECT toplevel, query, calls FROM pg_stat_statements
		WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1)`, dbname)
	if err != nil {
		return fmt.Errorf("read pg_stat_statements: %w", err)
	}
	defer rows.Close()
	top, nested := map[string]int64{}, map[string]int64{}
	for rows.Next() {
		var toplevel bool
		var query string
		var calls int64
		if err := rows.Scan(&toplevel, &query, &calls); err != nil {
			return err
		}
		label := statementLabel(query)
		if toplevel {
			top[label] += calls
			r.Statements += calls
		} else {
			nested[label] += calls
		}
	}
	r.Statements -= monitor
	r.ByStatement, r.Nested = sortedCounts(top), sortedCounts(nested)
	return rows.Err()
}

// statementLabel shortens a normalized statement to one line.
func statementLabel(q string) string {
	q = strings.Join(strings.Fields(stripComments(q)), " ")
	if r := []rune(q); len(r) > 90 {
		q = string(r[:89]) + "…"
	}
	return q
}

// executionsByClient counts machine-step executions by River client id
// (river_job.attempted_by: one entry per execution, River keeps the last
// 100 of a job).
func executionsByClient(ctx context.Context, db *pgxpool.Pool) (map[string]int, error) {
	rows, err := db.Query(ctx, `SELECT who, count(*) FROM river_job, unnest(attempted_by) AS who
		WHERE kind = 'machine_migration' GROUP BY who`)
	if err != nil {
		return nil, fmt.Errorf("count executions by replica: %w", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var who string
		var c int
		if err := rows.Scan(&who, &c); err != nil {
			return nil, err
		}
		out[who] = c
	}
	return out, rows.Err()
}
