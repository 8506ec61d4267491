package flymachines

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/hermes-cloud/migrator/internal/callrec"
	"github.com/hermes-cloud/migrator/internal/clock"
)

// Defaults, per Fly's published Machines API limits and the /wait clamp.
const (
	DefaultUserAgent   = "migrator"
	DefaultAPIBaseURL  = "https://api.fly.io"
	DefaultCallTimeout = 30 * time.Second
	// MaxWaitStep is the longest a single /wait call may block: Fly clamps it.
	MaxWaitStep     = 60 * time.Second
	DefaultWaitStep = MaxWaitStep
	// DefaultMax429Retries bounds how often one request is re-sent after a 429.
	DefaultMax429Retries = 5
	// maxRetryAfter caps a server's Retry-After so a bogus value cannot park a call.
	maxRetryAfter = 60 * time.Second
)

// Limit is one token bucket: Rate requests per second (of the Config.Clock's
// timeline), up to Burst at once.
type Limit struct {
	Rate  rate.Limit
	Burst int
}

// RateLimits are the client-side buckets the transport enforces so Fly never
// has to answer 429. Zero fields take the defaults.
type RateLimits struct {
	// Action applies per (machine, action): update, lease, wait, start, stop, ...
	// Default 1/s, burst 3.
	Action Limit
	// Get applies per machine to GET /machines/{id}. Default 5/s, burst 10.
	Get Limit
	// List applies per app to GET /machines and per org to GET /apps.
	// Default 1/s, burst 3.
	List Limit
}

// DefaultRateLimits returns Fly's published limits.
func DefaultRateLimits() RateLimits {
	return RateLimits{
		Action: Limit{Rate: 1, Burst: 3},
		Get:    Limit{Rate: 5, Burst: 10},
		List:   Limit{Rate: 1, Burst: 3},
	}
}

func (r RateLimits) withDefaults() RateLimits {
	d := DefaultRateLimits()
	if r.Action.Rate <= 0 || r.Action.Burst <= 0 {
		r.Action = d.Action
	}
	if r.Get.Rate <= 0 || r.Get.Burst <= 0 {
		r.Get = d.Get
	}
	if r.List.Rate <= 0 || r.List.Burst <= 0 {
		r.List = d.List
	}
	return r
}

// Config configures a Client. Only Token is required.
type Config struct {
	// Token is the Fly API token (FLY_API_TOKEN in cmd/). Tokens starting
	// fm1r_/fm1a_/fm2_ are sent as "FlyV1", others as "Bearer" (fly-go's
	// tokens.Parse). It never appears in a log line or an error.
	Token string
	// BaseURL overrides the Machines API endpoint. Empty: fly-go's default,
	// which fly-go itself reads from FLY_FLAPS_BASE_URL when the client is
	// made (https://api.machines.dev otherwise). When set, the transport
	// rewrites the scheme and host of every request (and prefixes its path,
	// which fly-go would drop), so a simulator on 127.0.0.1 works.
	BaseURL string
	// APIBaseURL is Fly's API (its GraphQL endpoint is APIBaseURL+
	// "/graphql": releases, release.go). Default https://api.fly.io (as
	// flyctl's FLY_API_BASE_URL), or BaseURL when that is set: a
	// simulator or proxy standing in for the Machines API stands in for
	// this one too.
	APIBaseURL string
	// UserAgent is sent with every request. Default "migrator".
	UserAgent string
	// CallTimeout is the wall-clock deadline of each HTTP call (including its
	// rate-limit and Retry-After waits), even when ctx has none. Default 30 s.
	// A /wait call gets its wait timeout on top.
	CallTimeout time.Duration
	// WaitStep is the timeout of one /wait call; default and maximum 60 s.
	WaitStep time.Duration
	// RateLimits default to Fly's published limits.
	RateLimits *RateLimits
	// Max429Retries bounds re-sends after a 429 (default 5; negative: none).
	Max429Retries int
	// Transport is the base round tripper (default: a clone of
	// http.DefaultTransport without a proxy); tests use it for fault
	// injection.
	Transport http.RoundTripper
	// Observe is told of every HTTP attempt (metrics).
	Observe callrec.Observer
	// Clock is the timeline of Retry-After, rate limits, lease expiry and the
	// /wait timeout (default clock.Real()). A scaled clock makes the client
	// pace itself in simulated time, as the fleet simulator does.
	Clock clock.Clock
	// Logger receives debug/warn lines without bodies or secrets. Default: discard.
	Logger *slog.Logger
}

// validate checks cfg and fills its defaults.
func (cfg *Config) validate() error {
	if cfg.Token == "" {
		return errors.New("flymachines: config: Token is required (FLY_API_TOKEN)")
	}
	if cfg.BaseURL != "" {
		u, err := url.Parse(cfg.BaseURL)
		// The URL is not echoed: it could carry credentials.
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return errors.New("flymachines: config: BaseURL must be an absolute http(s) URL")
		}
		if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			return errors.New("flymachines: config: BaseURL must not carry user info, a query or a fragment")
		}
	}
	if cfg.APIBaseURL == "" {
		cfg.APIBaseURL = DefaultAPIBaseURL
		if cfg.BaseURL != "" {
			cfg.APIBaseURL = cfg.BaseURL
		}
	}
	if u, err := url.Parse(cfg.APIBaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return errors.New("flymachines: config: APIBaseURL must be an absolute http(s) URL without user info, query or fragment")
	}
	cfg.APIBaseURL = strings.TrimSuffix(cfg.APIBaseURL, "/")
	if cfg.UserAgent == "" {
		cfg.UserAgent = DefaultUserAgent
	}
	if cfg.CallTimeout < 0 {
		return errors.New("flymachines: config: CallTimeout must not be negative")
	}
	if cfg.CallTimeout == 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.WaitStep < 0 {
		return errors.New("flymachines: config: WaitStep must not be negative")
	}
	if cfg.WaitStep == 0 || cfg.WaitStep > MaxWaitStep {
		cfg.WaitStep = DefaultWaitStep
	}
	if cfg.WaitStep < time.Second {
		cfg.WaitStep = time.Second // the API counts whole seconds
	}
	rl := DefaultRateLimits()
	if cfg.RateLimits != nil {
		rl = cfg.RateLimits.withDefaults()
	}
	cfg.RateLimits = &rl
	if cfg.Max429Retries == 0 {
		cfg.Max429Retries = DefaultMax429Retries
	}
	if cfg.Max429Retries < 0 {
		cfg.Max429Retries = 0
	}
	if cfg.Transport == nil {
		// http.DefaultTransport keeps 2 idle connections per host: with
		// dozens of workers on one API host, most calls would open a new
		// TLS connection.
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 100
		// The client carries the Fly API token: HTTPS_PROXY in the
		// environment must not route it through anyone.
		t.Proxy = nil
		cfg.Transport = t
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}
