package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultConnectTimeout bounds the first connection made by Open, and every
// later connection attempt of the pool.
const DefaultConnectTimeout = 10 * time.Second

// openConfig is what Open's options set.
type openConfig struct {
	connectTimeout time.Duration
	tracer         pgx.QueryTracer
	maxConns       int32
	appName        string
}

// OpenOption adjusts Open.
type OpenOption func(*openConfig)

// WithConnectTimeout replaces DefaultConnectTimeout.
func WithConnectTimeout(d time.Duration) OpenOption {
	return func(c *openConfig) { c.connectTimeout = d }
}

// WithQueryTracer installs a pgx tracer on every connection of the pool
// (a benchmark counts SQL statements with it).
func WithQueryTracer(t pgx.QueryTracer) OpenOption {
	return func(c *openConfig) { c.tracer = t }
}

// WithMaxConns sets the pool size (default: pgx's, max(4, CPUs), or the
// URL's pool_max_conns). Upgrade needs at least 2.
func WithMaxConns(n int32) OpenOption {
	return func(c *openConfig) { c.maxConns = n }
}

// WithApplicationName sets the connections' application_name (what
// pg_stat_activity shows), over the URL's: serve names its probes' pool
// apart from the workers'.
func WithApplicationName(name string) OpenOption {
	return func(c *openConfig) { c.appName = name }
}

// ConfigError says the connection string cannot be used. Its message is
// built here, never copied from the parser, so it cannot carry a password.
type ConfigError struct {
	Reason string
}

func (e *ConfigError) Error() string { return "invalid connection string: " + e.Reason }

// ConnectError says the database could not be reached or refused us. Target
// and Reason never hold the password.
type ConnectError struct {
	Target string // user@host:port/database
	Reason string
	err    error // the underlying network or server error, for errors.As
}

func (e *ConnectError) Error() string {
	return fmt.Sprintf("cannot connect to %s: %s", e.Target, e.Reason)
}

func (e *ConnectError) Unwrap() error { return e.err }

// Open parses databaseURL, connects and pings within the connect timeout,
// and returns the pool. Errors are *ConfigError or *ConnectError, on one
// line, without the password.
func Open(ctx context.Context, databaseURL string, opts ...OpenOption) (*pgxpool.Pool, error) {
	oc := openConfig{connectTimeout: DefaultConnectTimeout}
	for _, o := range opts {
		o(&oc)
	}
	if strings.TrimSpace(databaseURL) == "" {
		return nil, &ConfigError{Reason: "it is empty"}
	}
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, &ConfigError{Reason: scrub(parseReason(err), databaseURL, "")}
	}
	cfg.ConnConfig.ConnectTimeout = oc.connectTimeout
	if oc.tracer != nil {
		cfg.ConnConfig.Tracer = oc.tracer
	}
	if oc.maxConns > 0 {
		cfg.MaxConns = oc.maxConns
	}
	if oc.appName != "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = oc.appName
	}
	target := describeTarget(cfg.ConnConfig)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, &ConfigError{Reason: scrub(err.Error(), databaseURL, cfg.ConnConfig.Password)}
	}
	pctx, cancel := context.WithTimeout(ctx, oc.connectTimeout)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, connectError(pctx, target, err, databaseURL, cfg.ConnConfig.Password, oc.connectTimeout)
	}
	return pool, nil
}

// parseReason turns a pgx parse error into a short reason. pgx's own text
// quotes the connection string (its password masking is best effort), so
// only its message and the inner error's text are kept; the caller scrubs
// them of anything that looks like the password.
func parseReason(err error) string {
	var pce *pgconn.ParseConfigError
	if !errors.As(err, &pce) {
		return "cannot parse it"
	}
	s := pce.Error()
	inner := errors.Unwrap(pce)
	if inner != nil {
		s = strings.TrimSuffix(s, " ("+inner.Error()+")")
	}
	// pgx writes "cannot parse `<masked string>`: <message>"; the message
	// comes last, so the last "`: " ends the quoted string.
	msg := "cannot parse it"
	if i := strings.LastIndex(s, "`: "); i >= 0 {
		msg = s[i+3:]
	}
	if inner != nil {
		msg += ": " + inner.Error()
	}
	return oneLine(msg)
}

// connectError classifies a failed first connection.
func connectError(ctx context.Context, target string, err error, databaseURL, password string, timeout time.Duration) *ConnectError {
	ce := &ConnectError{Target: target}
	var pgErr *pgconn.PgError
	var netErr net.Error
	var pgcErr *pgconn.ConnectError
	switch {
	case errors.As(err, &pgErr):
		ce.err = pgErr
		ce.Reason = fmt.Sprintf("server said: %s (SQLSTATE %s)", pgErr.Message, pgErr.Code)
	case ctx.Err() != nil || pgconn.Timeout(err):
		ce.err = context.DeadlineExceeded
		ce.Reason = fmt.Sprintf("no answer within %s", timeout)
	case errors.As(err, &netErr):
		ce.err = netErr
		ce.Reason = netErr.Error()
	case errors.As(err, &pgcErr):
		ce.err = errors.Unwrap(pgcErr)
		ce.Reason = fmt.Sprint(ce.err)
	default:
		ce.err = err
		ce.Reason = err.Error()
	}
	ce.Reason = scrub(oneLine(ce.Reason), databaseURL, password)
	return ce
}

// describeTarget names the database without the password.
func describeTarget(c *pgx.ConnConfig) string {
	host := c.Host
	if !strings.HasPrefix(host, "/") {
		host = net.JoinHostPort(host, strconv.Itoa(int(c.Port)))
	}
	return fmt.Sprintf("%s@%s/%s", c.User, host, c.Database)
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// scrub is the last guard: whatever a message says, it must not contain the
// connection string or its password.
func scrub(s, databaseURL, password string) string {
	for _, secret := range append(passwordCandidates(databaseURL), password, databaseURL) {
		if len(secret) >= 3 {
			s = strings.ReplaceAll(s, secret, "xxxxx")
		}
	}
	return s
}

// passwordCandidates finds what may be a password in a connection string
// that could not be parsed: the URL userinfo after the first ':' and any
// password= value.
func passwordCandidates(dsn string) []string {
	var out []string
	if rest, ok := strings.CutPrefix(dsn, "postgres://"); ok || strings.HasPrefix(dsn, "postgresql://") {
		if !ok {
			rest = strings.TrimPrefix(dsn, "postgresql://")
		}
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			if _, pw, found := strings.Cut(rest[:at], ":"); found {
				out = append(out, pw)
				if dec, err := url.PathUnescape(pw); err == nil {
					out = append(out, dec)
				}
			}
		}
	}
	for _, f := range strings.Fields(dsn) {
		if v, ok := strings.CutPrefix(f, "password="); ok {
			out = append(out, strings.Trim(v, "'"))
		}
	}
	for i := strings.Index(dsn, "password="); i >= 0; {
		v := dsn[i+len("password="):]
		if j := strings.IndexAny(v, "& "); j >= 0 {
			v = v[:j]
		}
		out = append(out, v)
		k := strings.Index(dsn[i+1:], "password=")
		if k < 0 {
			break
		}
		i += 1 + k
	}
	return out
}
