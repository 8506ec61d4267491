package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/flymachines"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// The processes of a replicas run: `migrator fleetsim` (started, its
// environment read, its state fetched, stopped) and the `migrator serve`
// replicas (started, waited for, sampled from /proc, stopped, their logs
// read).

// replica is a running serve process.
type replica struct {
	cmd   *exec.Cmd
	log   string
	id    string
	done  chan struct{}
	pprof string

	// the last /proc reading (kept once the process is gone)
	rss, hwm int64
	cpu      time.Duration
	conns    int
	killed   bool
}

// simProcess is `migrator fleetsim` running as a process of its own.
type simProcess struct {
	cmd    *exec.Cmd
	env    map[string]string
	done   chan struct{}
	client *http.Client
}

func startFleetsim(ctx context.Context, cfg ReplicasConfig, dir string) (*simProcess, error) {
	errLog, err := os.Create(filepath.Join(dir, "fleetsim.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(cfg.Binary, "fleetsim", "--apps", strconv.Itoa(cfg.Machines), "--listen", "127.0.0.1:0",
		"--seed", strconv.FormatInt(cfg.Seed, 10), "--time-scale", strconv.FormatFloat(cfg.TimeScale, 'g', -1, 64),
		"--api-sim-time", "--drain-turns", fmt.Sprintf("%s:%g", cfg.TurnMedian, cfg.TurnSigma))
	cmd.Env, cmd.Dir, cmd.Stderr = childEnv(nil), dir, errLog
	out, err := cmd.StdoutPipe()
	if err != nil {
		errLog.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		errLog.Close()
		return nil, fmt.Errorf("start fleetsim: %w", err)
	}
	p := &simProcess{cmd: cmd, done: make(chan struct{}), client: &http.Client{Timeout: 2 * time.Minute}}
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, out)
	}()
	go func() { _ = cmd.Wait(); errLog.Close(); close(p.done) }()
	var text strings.Builder
	deadline := time.After(time.Minute)
	complete := func() bool {
		for _, k := range []string{"FLY_API_TOKEN", "FLY_FLAPS_BASE_URL", "MIGRATOR_CLOCK", "MIGRATOR_DRAIN_KEY", "MIGRATOR_FLY_ORG", "MIGRATOR_GATEWAY_URL", "MIGRATOR_SEAL_KEY"} {
			if p.env[k] == "" {
				return false
			}
		}
		return true
	}
	for !complete() {
		select {
		case l, ok := <-lines:
			if !ok {
				p.stop()
				return nil, fmt.Errorf("fleetsim exited before printing its environment (see %s)", errLog.Name())
			}
			text.WriteString(l + "\n")
			p.env = fleetsim.ParseExports(text.String())
		case <-deadline:
			p.stop()
			return nil, errors.New("fleetsim printed no environment within a minute")
		case <-ctx.Done():
			p.stop()
			return nil, ctx.Err()
		}
	}
	return p, nil
}

// state reads the simulator's whole state (GET /_sim/state).
func (p *simProcess) state(ctx context.Context) (fleetsim.State, error) {
	var st fleetsim.State
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.env["FLY_FLAPS_BASE_URL"]+"/_sim/state", nil)
	if err != nil {
		return st, err
	}
	req.Header.Set("Authorization", "Bearer "+p.env["FLY_API_TOKEN"])
	res, err := p.client.Do(req)
	if err != nil {
		return st, fmt.Errorf("read the simulator's state: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return st, fmt.Errorf("read the simulator's state: HTTP %d", res.StatusCode)
	}
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("decode the simulator's state: %w", err)
	}
	return st, nil
}

func (p *simProcess) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func startReplica(cfg ReplicasConfig, simEnv map[string]string, dsn string, i int, profile bool, dir string) (*replica, error) {
	logPath := filepath.Join(dir, fmt.Sprintf("replica-%d.log", i+1))
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	scaled := func(d time.Duration) string {
		return max(time.Duration(float64(d)/cfg.TimeScale), time.Millisecond).String()
	}
	env := map[string]string{
		"DATABASE_URL":       withAppName(dsn, fmt.Sprintf("migrator-replica-%d", i+1)),
		"MIGRATOR_HTTP_ADDR": "127.0.0.1:0",
		"MIGRATOR_FLEET_CAP": strconv.Itoa(cfg.Budget),
		"MIGRATOR_WORKERS":   strconv.Itoa(cfg.Workers),
		// River's timers are wall time: its fetch poll (1 s) and the fill
		// safety net (10 s) are scaled like the clock, as in the other
		// scenarios; its crash-safety tuning is not (see Kill).
		"MIGRATOR_FETCH_POLL_INTERVAL": scaled(time.Second),
		"MIGRATOR_FILL_INTERVAL":       scaled(10 * time.Second),
		"MIGRATOR_LOG_LEVEL":           "info",
	}
	for k, v := range simEnv {
		env[k] = v
	}
	if cfg.JobTimeout > 0 {
		env["MIGRATOR_JOB_TIMEOUT"], env["MIGRATOR_RESCUE_AFTER"] = cfg.JobTimeout.String(), cfg.RescueAfter.String()
	}
	if profile {
		env["MIGRATOR_PPROF_ADDR"] = "127.0.0.1:0"
	}
	cmd := exec.Command(cfg.Binary, "serve")
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = childEnv(env), dir, f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start replica %d: %w", i+1, err)
	}
	r := &replica{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(r.done) }()
	return r, nil
}

// childEnv is this process's environment without migrator's and the
// database's settings (a developer's shell may hold some), plus set.
func childEnv(set map[string]string) []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "MIGRATOR_") || strings.HasPrefix(k, "FLY_") || k == "DATABASE_URL" || k == "TEST_DATABASE_URL" {
			continue
		}
		out = append(out, kv)
	}
	for k, v := range set {
		out = append(out, k+"="+v)
	}
	return out
}

// waitServing waits for the replica's start line: its River id, and its
// profile address when it serves one.
func (r *replica) waitServing(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		data, _ := os.ReadFile(r.log)
		for _, line := range bytes.Split(data, []byte("\n")) {
			var l struct {
				Msg, Replica, PprofAddr string
			}
			if json.Unmarshal(line, &struct {
				Msg       *string `json:"msg"`
				Replica   *string `json:"replica"`
				PprofAddr *string `json:"pprof_addr"`
			}{&l.Msg, &l.Replica, &l.PprofAddr}) != nil {
				continue
			}
			if l.PprofAddr != "" {
				r.pprof = l.PprofAddr
			}
			if l.Msg == "serving" && l.Replica != "" {
				r.id = l.Replica
				return nil
			}
		}
		select {
		case <-r.done:
			return fmt.Errorf("serve exited before serving: %s", lastLines(string(data), 5))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("serve not serving after %s: %s", limit, lastLines(string(data), 5))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func lastLines(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(ls[max(len(ls)-n, 0):], " | ")
}

// sample reads the replica's CPU, RSS and peak RSS from /proc (kept when
// the process is gone).
func (r *replica) sample() {
	if r.killed {
		return
	}
	pid := r.cmd.Process.Pid
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status"); err == nil {
		if v, ok := statusField(b, "VmHWM:"); ok {
			r.hwm = max(r.hwm, v)
		}
		if v, ok := statusField(b, "VmRSS:"); ok {
			r.rss = v
		}
	}
	if c := procCPU(pid); c > 0 {
		r.cpu = c
	}
}

// stop ends a replica that is still running: SIGTERM (steps in flight
// finish), then SIGKILL after serve's grace.
func (r *replica) stop() {
	select {
	case <-r.done:
		return
	default:
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
}

// logCounts reads the replica's log: machines whose update it sent (the
// transition to verifying follows the update in the same step) and the
// machine transitions it wrote.
func (r *replica) logCounts() (updates, transitions int) {
	f, err := os.Open(r.log)
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Bytes()
		if bytes.Contains(l, []byte(`"msg":"machine `)) {
			transitions++
			if bytes.Contains(l, []byte(`"msg":"machine verifying"`)) && bytes.Contains(l, []byte(`"from":"updating"`)) {
				updates++
			}
		}
	}
	return updates, transitions
}

// warnings counts the replica's warn and error lines and keeps the first.
func (r *replica) warnings() (int, []string) {
	f, err := os.Open(r.log)
	if err != nil {
		return 0, nil
	}
	defer f.Close()
	n := 0
	var first []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l struct {
			Level, Msg, Error string
		}
		if json.Unmarshal(sc.Bytes(), &l) != nil || l.Level != "WARN" && l.Level != "ERROR" {
			continue
		}
		n++
		if len(first) < keepWarnings {
			msg := l.Msg
			if l.Error != "" {
				msg += ": " + l.Error
			}
			first = append(first, msg)
		}
	}
	return n, first
}

// startPlanner is what `migrator run create` builds to plan and create a
// run in this process: an orchestrator on a small pool of its own, against
// the simulator, with an insert-only River client. closePlanner ends the pool.
func startPlanner(ctx context.Context, dsn string, sim *simProcess, clk *clock.Scaled, budget int) (orch *orchestrator.Orchestrator, closePlanner func(), err error) {
	pool, err := store.Open(ctx, withAppName(dsn, "migrator-bench-cli"), store.WithMaxConns(4))
	if err != nil {
		return nil, nil, err
	}
	fly, err := flymachines.New(ctx, flymachines.Config{Token: sim.env["FLY_API_TOKEN"], BaseURL: sim.env["FLY_FLAPS_BASE_URL"], Clock: clk})
	if err != nil {
		pool.Close()
		return nil, nil, fmt.Errorf("fly client: %w", err)
	}
	orch, err = orchestrator.New(orchestrator.Config{FleetCap: budget, Clock: clk}, store.New(pool), fly, nil, policy.Default())
	if err == nil {
		_, err = orch.NewRiverClient(orchestrator.RiverOptions{Logger: slog.New(slog.DiscardHandler)})
	}
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return orch, pool.Close, nil
}

// parseClock reads MIGRATOR_CLOCK as fleetsim prints it.
func parseClock(v string) (*clock.Scaled, error) {
	parts := strings.Split(v, ":")
	if len(parts) != 3 || parts[0] != "scaled" {
		return nil, fmt.Errorf("MIGRATOR_CLOCK %q: want scaled:FACTOR:START_UNIX_NANO", v)
	}
	f, err1 := strconv.ParseFloat(parts[1], 64)
	ns, err2 := strconv.ParseInt(parts[2], 10, 64)
	if err1 != nil || err2 != nil || f <= 0 {
		return nil, fmt.Errorf("MIGRATOR_CLOCK %q: want scaled:FACTOR:START_UNIX_NANO", v)
	}
	start := time.Unix(0, ns)
	return clock.NewScaledAt(start, start, f), nil
}
