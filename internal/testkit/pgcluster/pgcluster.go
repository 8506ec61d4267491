package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrNoServerBinaries is returned when initdb and postgres cannot be found.
var ErrNoServerBinaries = errors.New("PostgreSQL server binaries (initdb, postgres) not found on PATH or in /usr/lib/postgresql/*/bin; install the Debian package postgresql")

// SuperUser is the database superuser of every cluster (trust authentication).
const SuperUser = "postgres"

// Config describes a cluster. Zero values are the defaults.
type Config struct {
	// Dir holds the cluster: <Dir>/data is the data directory and
	// <Dir>/postgres.log the server log. Required. It is created if missing;
	// an already initialised data directory is reused.
	Dir string
	// Port is the loopback TCP port. Default 0: a free port is picked (and
	// another one if it was taken before the server could bind it).
	Port int
	// MaxConnections is postgres' max_connections. Default 200.
	MaxConnections int
	// StartTimeout bounds initdb plus the wait for the server to accept
	// connections. Default 60 s.
	StartTimeout time.Duration
	// Settings are more server settings, "name=value" each (postgres -c),
	// after the defaults above (the benchmark preloads pg_stat_statements).
	Settings []string
}

func (c Config) validate() error {
	if c.Dir == "" {
		return errors.New("pgcluster: Config.Dir is required")
	}
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("pgcluster: Config.Port %d out of range", c.Port)
	}
	if c.MaxConnections < 0 || c.StartTimeout < 0 {
		return errors.New("pgcluster: Config.MaxConnections and StartTimeout must not be negative")
	}
	for _, kv := range c.Settings {
		if k, _, ok := strings.Cut(kv, "="); !ok || strings.TrimSpace(k) == "" {
			return fmt.Errorf("pgcluster: setting %q: want name=value", kv)
		}
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.MaxConnections == 0 {
		c.MaxConnections = 200
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 60 * time.Second
	}
	return c
}

// Cluster is one running (or stopped) PostgreSQL server.
type Cluster struct {
	cfg      Config
	binDir   string
	dataDir  string
	logPath  string
	cred     *syscall.Credential // nil unless we run as root
	autoPort bool

	mu   sync.Mutex
	port int
	proc *process
}

type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited
	err  error         // Wait's result, valid after done
}

// Start initialises (if needed) and starts a cluster in dir with the default
// configuration.
func Start(dir string) (*Cluster, error) { return StartConfig(Config{Dir: dir}) }

// StartConfig initialises (if needed) and starts a cluster.
func StartConfig(cfg Config) (*Cluster, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	binDir, err := FindBinaries()
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	cfg.Dir = dir
	c := &Cluster{
		cfg:      cfg,
		binDir:   binDir,
		dataDir:  filepath.Join(dir, "data"),
		logPath:  filepath.Join(dir, "postgres.log"),
		port:     cfg.Port,
		autoPort: cfg.Port == 0,
	}
	if os.Geteuid() == 0 {
		if c.cred, err = postgresCredential(); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.StartTimeout)
	defer cancel()
	if err := c.initdb(ctx); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.startLocked(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// FindBinaries returns the directory holding initdb and postgres: the one of
// initdb on PATH, else the newest /usr/lib/postgresql/<version>/bin.
func FindBinaries() (string, error) { return findBinaries("/usr/lib/postgresql/*/bin") }

func findBinaries(fallbackGlob string) (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		// Resolve symlinks (Debian's /usr/local/bin links) so postgres is
		// looked up beside the real initdb.
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		if dir := filepath.Dir(p); isExecutable(filepath.Join(dir, "postgres")) {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob(fallbackGlob)
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, dir := range dirs {
		if isExecutable(filepath.Join(dir, "initdb")) && isExecutable(filepath.Join(dir, "postgres")) {
			return dir, nil
		}
	}
	return "", ErrNoServerBinaries
}

func versionOf(binDir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	return v
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// postgresCredential is who runs the server when we are root: PostgreSQL
// refuses to run as root.
func postgresCredential() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, errors.New(`pgcluster: running as root, and PostgreSQL refuses root, but there is no OS user "postgres" to run it as; install the Debian package postgresql (it creates the user)`)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("pgcluster: OS user postgres has a non-numeric uid/gid %q/%q", u.Uid, u.Gid)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

// initdb creates the data directory unless it already holds a cluster.
func (c *Cluster) initdb(ctx context.Context) error {
	if err := os.MkdirAll(c.cfg.Dir, 0o700); err != nil {
		return fmt.Errorf("pgcluster: create %s: %w", c.cfg.Dir, err)
	}
	if err := c.chown(c.cfg.Dir); err != nil {
		return err
	}
	if err := c.checkReachable(); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(c.dataDir, "PG_VERSION")); err == nil {
		return nil // initialised by an earlier Start: reuse it
	}
	cmd := exec.CommandContext(ctx, filepath.Join(c.binDir, "initdb"),
		"-D", c.dataDir, "-U", SuperUser, "--auth=trust", "--encoding=UTF8",
		"--locale=C", "--no-sync", "--no-instructions")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = c.childEnv()
	cmd.Dir = c.cfg.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pgcluster: initdb in %s: %w: %s", c.dataDir, err, lastLines(out.String(), 5))
	}
	return nil
}

// chown hands p to the server's OS user when we run as root.
func (c *Cluster) chown(p string) error {
	if c.cred == nil {
		return nil
	}
	if err := os.Chown(p, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
		return fmt.Errorf("pgcluster: hand %s to user postgres: %w", p, err)
	}
	return nil
}

// checkReachable tells early and clearly when the server's OS user cannot
// reach Dir (a private parent such as a root-owned 0700 temp directory),
// instead of initdb's bare "permission denied".
func (c *Cluster) checkReachable() error {
	if c.cred == nil {
		return nil
	}
	for p := filepath.Dir(c.cfg.Dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("pgcluster: %w", err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		searchable := fi.Mode()&0o001 != 0 ||
			(ok && st.Uid == c.cred.Uid && fi.Mode()&0o100 != 0) ||
			(ok && st.Gid == c.cred.Gid && fi.Mode()&0o010 != 0)
		if !searchable {
			return fmt.Errorf("pgcluster: the OS user postgres (the server cannot run as root) cannot reach %s: %s is not searchable by it; use a directory under /tmp or chmod o+x %s", c.cfg.Dir, p, p)
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// childEnv is our environment without the PG* variables, which would
// otherwise redirect initdb or the server.
func (c *Cluster) childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return append(env, "LC_ALL=C")
}

func (c *Cluster) startLocked(ctx context.Context) error {
	if c.proc != nil {
		return nil
	}
	const attempts = 4
	var err error
	for i := 0; i < attempts; i++ {
		if c.autoPort && (c.port == 0 || i > 0) {
			if c.port, err = freePort(); err != nil {
				return err
			}
		}
		var exited bool
		exited, err = c.launch(ctx)
		if err == nil {
			return nil
		}
		// A server that exited at once with a port we picked most likely
		// lost a race for that port with another process: pick another.
		if !exited || !c.autoPort {
			break
		}
	}
	return err
}

// launch starts postgres and waits until it accepts connections. exited
// reports whether the process ended by itself.
func (c *Cluster) launch(ctx context.Context) (exited bool, err error) {
	logf, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return false, fmt.Errorf("pgcluster: open server log: %w", err)
	}
	defer logf.Close() // the child keeps its own copy of the descriptor
	args := []string{"-D", c.dataDir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "port=" + strconv.Itoa(c.port),
		"-c", "unix_socket_directories=", // TCP only: no socket path limits, no /var/run writes
		"-c", "max_connections=" + strconv.Itoa(c.cfg.MaxConnections),
		"-c", "shared_buffers=32MB",
		"-c", "fsync=off",
		"-c", "full_page_writes=off",
		"-c", "synchronous_commit=off",
	}
	for _, kv := range c.cfg.Settings {
		args = append(args, "-c", kv)
	}
	cmd := exec.Command(filepath.Join(c.binDir, "postgres"), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = c.childEnv()
	cmd.Dir = c.cfg.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: c.cred,
		// Its own process group, so a terminal's Ctrl-C reaches only us and
		// we stop the server in order; if we die, the server quits too.
		Setpgid:   true,
		Pdeathsig: syscall.SIGQUIT,
	}
	if err := cmd.Start(); err != nil {
		return false, fmt.Errorf("pgcluster: start postgres: %w", err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()

	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-p.done:
			return true, fmt.Errorf("pgcluster: postgres exited during start-up (%v): %s", p.err, c.logTail())
		case <-ctx.Done():
			stopProcess(p)
			return false, fmt.Errorf("pgcluster: postgres did not accept connections in time: %s", c.logTail())
		case <-tick.C:
			if c.ping(ctx) == nil {
				c.proc = p
				return false, nil
			}
		}
	}
}

func (c *Cluster) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, c.dsnLocked("postgres"))
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgcluster: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Stop shuts the server down (fast shutdown: sessions are disconnected,
// data is kept). Stopping a stopped cluster does nothing.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopLocked()
}

func (c *Cluster) stopLocked() error {
	if c.proc == nil {
		return nil
	}
	p := c.proc
	c.proc = nil
	return stopProcess(p)
}

func stopProcess(p *process) error {
	// SIGINT is PostgreSQL's fast shutdown; SIGQUIT its immediate one.
	for _, s := range []struct {
		sig  syscall.Signal
		wait time.Duration
	}{{syscall.SIGINT, 60 * time.Second}, {syscall.SIGQUIT, 10 * time.Second}, {syscall.SIGKILL, 10 * time.Second}} {
		_ = p.cmd.Process.Signal(s.sig)
		t := time.NewTimer(s.wait)
		select {
		case <-p.done:
			t.Stop()
			return nil
		case <-t.C:
		}
	}
	return errors.New("pgcluster: postgres did not exit")
}

// Kill ends the server abruptly (immediate shutdown, as after a crash: the
// next start runs crash recovery). For tests of a database that goes away.
func (c *Cluster) Kill() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return nil
	}
	p := c.proc
	c.proc = nil
	_ = p.cmd.Process.Signal(syscall.SIGQUIT)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.done
		return nil
	}
}

// StartAgain starts a stopped cluster on the same data and port.
func (c *Cluster) StartAgain() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.StartTimeout)
	defer cancel()
	// Keep the port: clients hold DSNs that name it.
	auto := c.autoPort
	c.autoPort = false
	defer func() { c.autoPort = auto }()
	return c.startLocked(ctx)
}

// Restart stops the server and starts it again on the same data and port.
func (c *Cluster) Restart() error {
	if err := c.Stop(); err != nil {
		return err
	}
	return c.StartAgain()
}

// Running reports whether the server process is up.
func (c *Cluster) Running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return false
	}
	select {
	case <-c.proc.done:
		return false
	default:
		return true
	}
}

// DSN is the connection URL of database dbname as the superuser.
func (c *Cluster) DSN(dbname string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dsnLocked(dbname)
}

func (c *Cluster) dsnLocked(dbname string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(SuperUser),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port)),
		Path:     "/" + dbname,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Port is the loopback TCP port the server listens on.
func (c *Cluster) Port() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.port
}

// Dir is the cluster directory (Config.Dir, made absolute).
func (c *Cluster) Dir() string { return c.cfg.Dir }

// LogPath is the server log file.
func (c *Cluster) LogPath() string { return c.logPath }

// logTail is the end of the server log, on one line, for error messages.
func (c *Cluster) logTail() string {
	b, err := os.ReadFile(c.logPath)
	if err != nil {
		return "(no server log)"
	}
	return lastLines(string(b), 5)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
