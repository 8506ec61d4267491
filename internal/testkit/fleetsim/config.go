package fleetsim

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"strings"
	"time"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/drainsecret"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultOrg            = "hermes"
	DefaultApps           = 3
	DefaultMachinesPerApp = 1
	DefaultAppPrefix      = "hermes-agent-"
	DefaultImage          = "registry.fly.io/hermes-agent:v1"
	DefaultBootTime       = 3 * time.Second
	DefaultCheckDelay     = 2 * time.Second
	DefaultGatewayStartup = 2 * time.Second
	DefaultWatcherDelay   = 1 * time.Second
	DefaultMarkerTTL      = 3600 * time.Second
	DefaultRateTolerance  = 50 * time.Millisecond
	DefaultTurnMedian     = 30 * time.Second
	DefaultTurnSigma      = 1.0
	// DefaultLeaseTTL is the lease length when POST /lease has no ttl.
	DefaultLeaseTTL      = 30 * time.Second
	DefaultAutostopAfter = 2 * time.Minute
	DefaultResumeTime    = 300 * time.Millisecond
	DefaultSidecarImage  = "registry.fly.io/log-shipper:v3"
	// DefaultScaleToZeroIdle is hermes-agent's scale-to-zero idle timeout
	// (gateway/scale_to_zero.py DEFAULT_IDLE_TIMEOUT_MINUTES = 2).
	DefaultScaleToZeroIdle = 2 * time.Minute
	// DefaultSuspendTime is how long a suspend takes from the request to
	// the freeze: hermes-agent measured 2.25 s to 4.19 s on Fly
	// (gateway/scale_to_zero.py, FLY_FREEZE_GRACE_S's comment).
	DefaultSuspendTime = 3 * time.Second
	// DefaultStopTime is how long a stop of a running machine stays
	// "stopping": the gateway exits on SIGTERM at once when nothing is in
	// flight (hermes-gateway.md: restart_drain_timeout 0, 5 s grace).
	DefaultStopTime = time.Second
	// MaxWaitTimeout is Fly's cap on one /wait call.
	MaxWaitTimeout = 60 * time.Second
)

// DefaultRegions are assigned to machines round-robin.
var DefaultRegions = []string{"iad", "ord", "ams"}

// Config configures a Sim. Zero fields take the documented defaults.
type Config struct {
	// Org is the organization slug ListApps answers for. Default "hermes".
	Org string
	// Apps is the number of apps, named AppPrefix+"1" … AppPrefix+"N".
	// Default 3.
	Apps int
	// MachinesPerApp is the number of machines of each app. Default 1.
	MachinesPerApp int
	// AppPrefix prefixes the app names. Default "hermes-agent-".
	AppPrefix string
	// Hostile makes the first Hostile apps' agents hostile (hostile.go):
	// huge and hostile headers, 1,000 platforms with names and errors
	// carrying Slack mentions, terminal escapes and formulas, and one
	// platform (HostilePlatform) that fails on any image but Image.
	// Default 0.
	Hostile int
	// Image every machine runs at the start. Default
	// "registry.fly.io/hermes-agent:v1".
	Image string
	// Regions are assigned to machines round-robin. Default iad, ord, ams.
	Regions []string
	// Labels returns a machine's config.metadata labels (merged over Fly's
	// own fly_* keys). Default {"hermes_auto_update":"true"}.
	Labels func(app, machineID string) map[string]string
	// FlyToken is the token the Machines API accepts, sent as "Bearer …" or
	// "FlyV1 …". Default: a generated throwaway token.
	FlyToken string
	// Unprovisioned selects the apps that start without the app secret
	// HERMES_DASHBOARD_DRAIN_SECRET: their agents answer every drain POST
	// with 401 until they are recreated, with min_secrets_version, after
	// the secret was set. Default: none (every app has its derived secret
	// at secrets version 1).
	Unprovisioned func(app string) bool
	// AppImage, if set, returns the image an app's machines run at the
	// start (e.g. a few on a legacy image); default Image for every app.
	AppImage func(app string) string
	// LegacyImages are images of an older Hermes without the drain route:
	// their dashboards answer 404 to POST /api/gateway/drain (401 on a
	// GatedBind).
	LegacyImages []string
	// HermesVersions maps an image to the Hermes version its agents report
	// (/api/status "version") and behave as: below 0.18.0 they ignore
	// suppress_notification and boot dark after a drained stop, below
	// 0.19.0 cron runs are not in active_agents and keep starting while
	// draining (hermes.go). An image not in it reports its tag and behaves
	// as the newest Hermes.
	HermesVersions map[string]string
	// GatedBind serves every dashboard as on a non-loopback bind, which is
	// how a control plane reaches an agent: a login gate answers every
	// non-public /api request no auth provider accepts with 401 before
	// routing (so an older Hermes without the drain route answers 401, not
	// 404), and /api/status leaves out gateway_pid and hermes_home.
	// Default false: a loopback bind.
	GatedBind bool
	// Platforms returns the messaging platforms an app's agent is
	// configured with. Default: a non-empty subset of DefaultPlatforms,
	// seeded from Seed and the app's name.
	Platforms func(app string) []string
	// DrainKey derives every agent's drain secret
	// (drainsecret.Derive(DrainKey, app)): base64 of at least 32 random
	// bytes (drainsecret.CheckKey), as MIGRATOR_DRAIN_KEY must be, whose
	// text is the key. Default: 32 random bytes, base64url (43 characters).
	DrainKey []byte
	// SealKey is not the fleet's: it is the MIGRATOR_SEAL_KEY that Env
	// hands migrator with the rest of its environment (serve needs one to
	// keep customers' env values sealed). Default: base64url of 32 random
	// bytes.
	SealKey string
	// Clock is the simulated timeline. Default clock.Real().
	Clock clock.Clock
	// Seed makes machine ids, workloads and fault draws reproducible.
	Seed int64
	// Workload scripts the agents' turns.
	Workload Workload
	// BootTime is the simulated time from an update (or start) to the new
	// instance being started. Default 3s.
	BootTime time.Duration
	// CheckDelay is the simulated time from start until health checks pass.
	// Default 2s.
	CheckDelay time.Duration
	// GatewayStartup is how long a booted gateway reports "starting".
	// Default 2s.
	GatewayStartup time.Duration
	// WatcherDelay is how long the gateway's watcher takes to notice a new
	// drain marker. Default 1s.
	WatcherDelay time.Duration
	// MarkerTTL: a marker older than this is ignored. Default 3600s.
	MarkerTTL time.Duration
	// DisableRateLimits turns off Fly's rate limits (enforced by default).
	DisableRateLimits bool
	// Limits overrides DefaultLimits per route name.
	Limits map[string]Limit
	// RateTolerance forgives requests that arrive this much (wall time)
	// ahead of the token bucket, so a client pacing itself at exactly
	// Fly's limits is not failed by network jitter. Default 50ms.
	RateTolerance time.Duration
	// RateLimitsSimTime makes the rate limits count requests per second of
	// Clock's timeline (a 100× clock allows 100× the requests per wall
	// second). Default false: per wall second, which is what a client must
	// respect against the real API. With a Real clock both are the same.
	RateLimitsSimTime bool
	// WaitSimTime makes /wait's timeout parameter seconds of Clock's
	// timeline. Default false: wall seconds (a timeout=60 wait that is not
	// satisfied then holds the request 60 real seconds even under a fast
	// clock).
	WaitSimTime bool
	// APISimTime sets both RateLimitsSimTime and WaitSimTime: the whole
	// API speaks the simulated timeline, for a client on the same clock.
	APISimTime bool
	// Logger receives debug lines about mutations. Default: discard.
	Logger *slog.Logger

	// Shape, if set, returns the machines of an app (overriding
	// MachinesPerApp when it returns any): their state at the start,
	// process group (release-command and console machines sit in the
	// listing beside the agent's), host status, containers and autostop.
	// See MachineShape and RealFleet.
	Shape func(app string) []MachineShape
	// AutostopAfter is how long a machine with autostop has no request
	// before it is stopped or suspended. Default 2m (Hermes suspends an
	// idle agent after about 2 minutes; Fly Proxy looks every few minutes).
	AutostopAfter time.Duration
	// ResumeTime is how long a suspended machine takes to resume.
	// Default 300ms ("a few hundred ms", Fly's suspend-resume reference).
	ResumeTime time.Duration
	// LeaseConflictFormat is how a 409 on a held lease states the expiry:
	// LeaseTimeRFC3339 (default; as Fly's logs show it this year) or
	// LeaseTimeGo (Go's time.String form with "code", as Fly's API docs show).
	LeaseConflictFormat string
	// SidecarImage is the image of the containers beside "app" in a
	// multi-container machine. Default "registry.fly.io/log-shipper:v3".
	SidecarImage string
	// ScaleToZeroIdle is the idle timeout of agents with scale-to-zero
	// (MachineShape.SelfSuspend). Default 2m (scaletozero.go).
	ScaleToZeroIdle time.Duration
	// SuspendTime is how long a machine stays "suspending" before it is
	// suspended (the API's suspend, autostop, an agent suspending itself).
	// Default 3s.
	SuspendTime time.Duration
	// StopTime is how long a running machine stays "stopping" before it is
	// stopped (the API's stop, autostop). Default 1s.
	StopTime time.Duration

	// wallNow is the wall clock of rate limits and /wait (tests).
	wallNow func() time.Time
}

// Workload scripts each machine's turns, reproducibly from Config.Seed.
// With BusyFraction 0, no Activity and no Turns function the fleet is idle;
// tests then script turns with Sim.AddTurn. BusyFraction, Activity and
// Turns exclude one another.
type Workload struct {
	// Activity, if set, is the activity model (see Activity): turns arrive
	// per agent as a Poisson process, so they may overlap.
	Activity *Activity
	// BusyFraction is the fraction of machines with a turn in flight at any
	// time, in [0, 1).
	BusyFraction float64
	// TurnMedian and TurnSigma shape the log-normal turn durations (heavy
	// tail). Defaults 30s and 1.0 when BusyFraction > 0.
	TurnMedian time.Duration
	TurnSigma  float64
	// Turns, if set, replaces the generator: it returns the machine's whole
	// script (offsets from the simulation's start), called once per machine
	// at New with a generator seeded for that machine.
	Turns func(app, machineID string, rng *mrand.Rand) []Turn
	// AtDrain, if set, starts the benchmark's turn on a machine whenever a
	// drain is begun on it (DrainTurns). It goes with any of the above
	// (an otherwise idle fleet, for the benchmark).
	AtDrain *DrainTurns
}

// Turn is one unit of agent work: a chat turn of Session beginning Start
// after the simulation's start (after now, for AddTurn) and lasting
// Duration of simulated time.
type Turn struct {
	Session  string
	Start    time.Duration
	Duration time.Duration
}

// LogNormal draws a log-normal duration with the given median and sigma.
func LogNormal(rng *mrand.Rand, median time.Duration, sigma float64) time.Duration {
	return time.Duration(float64(median) * math.Exp(sigma*rng.NormFloat64()))
}

// Limit is one token bucket: Rate requests per second, up to Burst at once.
type Limit struct {
	Rate  float64
	Burst int
}

// DefaultLimits returns Fly's published Machines API limits by route name:
// 1 request/s per action per machine (burst 3), Get Machine 5/s (burst 10),
// lists per app (the app list per org).
func DefaultLimits() map[string]Limit {
	action := Limit{Rate: 1, Burst: 3}
	return map[string]Limit{
		RouteListApps:     action,
		RouteGetApp:       action,
		RouteList:         action,
		RouteGet:          {Rate: 5, Burst: 10},
		RouteUpdate:       action,
		RouteLease:        action,
		RouteLeaseGet:     action,
		RouteLeaseRelease: action,
		RouteWait:         action,
		RouteStart:        action,
		RouteStop:         action,
		RouteSuspend:      action,
		RouteRestart:      action,
		RouteSecretsList:  action,
		RouteSecretSet:    action,
		RouteSecretsSet:   action,
		RouteSecretDelete: action,
	}
}

// Route names, used by Faults, Requests and Limits.
const (
	RouteListApps     = "fly.list_apps"
	RouteGetApp       = "fly.get_app"
	RouteList         = "fly.list"
	RouteGet          = "fly.get"
	RouteUpdate       = "fly.update"
	RouteLease        = "fly.lease" // acquire and refresh
	RouteLeaseGet     = "fly.lease_get"
	RouteLeaseRelease = "fly.lease_release"
	RouteWait         = "fly.wait"
	RouteStart        = "fly.start"
	RouteStop         = "fly.stop"
	RouteSuspend      = "fly.suspend"
	RouteRestart      = "fly.restart"
	RouteSecretsList  = "fly.secrets_list"
	RouteSecretSet    = "fly.secret_set"
	RouteSecretsSet   = "fly.secrets_update"
	RouteSecretDelete = "fly.secret_delete"
	// RouteGraphQL is Fly's GraphQL API (api.fly.io/graphql): releases.
	RouteGraphQL      = "graphql"
	RouteFlyUnknown   = "fly.unknown"
	RouteDrain        = "gateway.drain"
	RouteStatus       = "gateway.status"
	RouteGatewayOther = "gateway.other"
)

func (c Config) withDefaults() (Config, error) {
	if c.Org == "" {
		c.Org = DefaultOrg
	}
	if c.Apps == 0 {
		c.Apps = DefaultApps
	}
	if c.MachinesPerApp == 0 {
		c.MachinesPerApp = DefaultMachinesPerApp
	}
	if c.AppPrefix == "" {
		c.AppPrefix = DefaultAppPrefix
	}
	if c.Image == "" {
		c.Image = DefaultImage
	}
	if len(c.Regions) == 0 {
		c.Regions = DefaultRegions
	}
	if c.Labels == nil {
		c.Labels = func(string, string) map[string]string {
			return map[string]string{"hermes_auto_update": "true"}
		}
	}
	if c.FlyToken == "" {
		c.FlyToken = "fo1_sim_" + randomToken(32)
	}
	if c.SealKey == "" {
		c.SealKey = randomToken(32)
	}
	if len(c.DrainKey) == 0 {
		c.DrainKey = []byte(randomToken(32))
	}
	if c.Clock == nil {
		c.Clock = clock.Real()
	}
	if c.BootTime == 0 {
		c.BootTime = DefaultBootTime
	}
	if c.CheckDelay == 0 {
		c.CheckDelay = DefaultCheckDelay
	}
	if c.GatewayStartup == 0 {
		c.GatewayStartup = DefaultGatewayStartup
	}
	if c.WatcherDelay == 0 {
		c.WatcherDelay = DefaultWatcherDelay
	}
	if c.MarkerTTL == 0 {
		c.MarkerTTL = DefaultMarkerTTL
	}
	if c.AutostopAfter == 0 {
		c.AutostopAfter = DefaultAutostopAfter
	}
	if c.ResumeTime == 0 {
		c.ResumeTime = DefaultResumeTime
	}
	if c.LeaseConflictFormat == "" {
		c.LeaseConflictFormat = LeaseTimeRFC3339
	}
	if c.SidecarImage == "" {
		c.SidecarImage = DefaultSidecarImage
	}
	if c.ScaleToZeroIdle == 0 {
		c.ScaleToZeroIdle = DefaultScaleToZeroIdle
	}
	if c.SuspendTime == 0 {
		c.SuspendTime = DefaultSuspendTime
	}
	if c.StopTime == 0 {
		c.StopTime = DefaultStopTime
	}
	if c.APISimTime {
		c.RateLimitsSimTime, c.WaitSimTime = true, true
	}
	if c.RateTolerance == 0 {
		c.RateTolerance = DefaultRateTolerance
	}
	if c.Workload.Activity != nil {
		a := c.Workload.Activity.withDefaults() // a copy: the caller's struct is not changed
		c.Workload.Activity = &a
	}
	if c.Workload.BusyFraction > 0 {
		if c.Workload.TurnMedian == 0 {
			c.Workload.TurnMedian = DefaultTurnMedian
		}
		if c.Workload.TurnSigma == 0 {
			c.Workload.TurnSigma = DefaultTurnSigma
		}
	}
	limits := DefaultLimits()
	for k, v := range c.Limits {
		limits[k] = v
	}
	c.Limits = limits
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.wallNow == nil {
		c.wallNow = time.Now
	}
	return c, c.validate()
}

func (c Config) validate() error {
	var errs []error
	if c.Apps < 0 {
		errs = append(errs, fmt.Errorf("apps must be positive, got %d", c.Apps))
	}
	if c.MachinesPerApp < 0 {
		errs = append(errs, fmt.Errorf("machines per app must be positive, got %d", c.MachinesPerApp))
	}
	if c.Hostile < 0 || c.Hostile > c.Apps {
		errs = append(errs, fmt.Errorf("hostile apps must be between 0 and the apps (%d), got %d", c.Apps, c.Hostile))
	}
	if strings.ContainsAny(c.AppPrefix, "/ ?#{}") {
		errs = append(errs, fmt.Errorf("app prefix %q has a character not allowed in an app name", c.AppPrefix))
	}
	if strings.ContainsAny(c.Org, "/ ?#&") {
		errs = append(errs, fmt.Errorf("org %q has a character not allowed in an org slug", c.Org))
	}
	for _, r := range c.Regions {
		if r == "" {
			errs = append(errs, errors.New("regions must not hold an empty name"))
			break
		}
	}
	if strings.ContainsAny(c.FlyToken, " \t\r\n,") {
		errs = append(errs, errors.New("fly token must not contain whitespace or commas"))
	}
	if err := drainsecret.CheckKey(c.DrainKey); err != nil {
		errs = append(errs, err)
	}
	for name, d := range map[string]time.Duration{
		"boot time": c.BootTime, "check delay": c.CheckDelay, "gateway startup": c.GatewayStartup,
		"watcher delay": c.WatcherDelay, "marker ttl": c.MarkerTTL, "rate tolerance": c.RateTolerance,
		"autostop after": c.AutostopAfter, "resume time": c.ResumeTime,
		"scale-to-zero idle": c.ScaleToZeroIdle, "suspend time": c.SuspendTime, "stop time": c.StopTime,
	} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative, got %s", name, d))
		}
	}
	if c.LeaseConflictFormat != LeaseTimeRFC3339 && c.LeaseConflictFormat != LeaseTimeGo {
		errs = append(errs, fmt.Errorf("lease conflict format %q: want %q or %q", c.LeaseConflictFormat, LeaseTimeRFC3339, LeaseTimeGo))
	}
	w := c.Workload
	if w.BusyFraction < 0 || w.BusyFraction >= 1 || math.IsNaN(w.BusyFraction) {
		errs = append(errs, fmt.Errorf("busy fraction must be in [0, 1), got %g", w.BusyFraction))
	}
	if w.TurnMedian < 0 || w.TurnSigma < 0 {
		errs = append(errs, errors.New("turn median and sigma must not be negative"))
	}
	if w.Activity != nil {
		if w.BusyFraction > 0 || w.Turns != nil {
			errs = append(errs, errors.New("workload: activity excludes busy fraction and scripted turns"))
		}
		if err := w.Activity.validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if w.AtDrain != nil && !w.AtDrain.valid() {
		errs = append(errs, fmt.Errorf("workload: drain turns need a positive median, sigma in [0, 5] and persistence in [0, 1], got %+v", *w.AtDrain))
	}
	for name, l := range c.Limits {
		if l.Rate <= 0 || l.Burst <= 0 {
			errs = append(errs, fmt.Errorf("limit %s needs a positive rate and burst", name))
		}
	}
	return errors.Join(errs...)
}

// randomToken returns n random bytes, base64url without padding.
func randomToken(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand panics on failure)
	return base64.RawURLEncoding.EncodeToString(b)
}

// LegacyImage is the image DayOne puts its legacy apps on: an older Hermes
// without the drain route.
const LegacyImage = "registry.fly.io/hermes-agent:v0"

// DayOne shapes c as a fleet before enrolment: the first legacy apps run
// LegacyImage (their drain endpoint answers 404) and the first
// unprovisioned apps have no drain secret (401 until recreated after it is
// set). Apps are counted by the number their names end in.
func (c *Config) DayOne(legacy, unprovisioned int) {
	if legacy > 0 {
		c.LegacyImages = append(c.LegacyImages, LegacyImage)
		c.AppImage = func(app string) string {
			if appNumber(app) <= legacy {
				return LegacyImage
			}
			return ""
		}
	}
	if unprovisioned > 0 {
		c.Unprovisioned = func(app string) bool { return appNumber(app) <= unprovisioned }
	}
}

// appNumber is the number an app's name ends in (0 if none).
func appNumber(app string) int {
	i := len(app)
	for i > 0 && app[i-1] >= '0' && app[i-1] <= '9' {
		i--
	}
	n := 0
	for _, c := range app[i:] {
		n = n*10 + int(c-'0')
		if n > 1<<30 {
			return 0
		}
	}
	return n
}
