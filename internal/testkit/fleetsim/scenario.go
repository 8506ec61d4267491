package fleetsim

import (
	"errors"
	"fmt"
	"time"

	"github.com/BurntSushi/toml"
)

// Scenario is a fleet and its faults, as written in a TOML file for
// `migrator fleetsim --scenario FILE`. Durations are Go duration strings.
//
//	org = "hermes"
//	apps = 20
//	machines_per_app = 1
//	image = "registry.fly.io/hermes-agent:v1"
//	time_scale = 10
//	fail_image_pull = ["registry.fly.io/hermes-agent:broken"]
//	never_healthy = ["registry.fly.io/hermes-agent:sick"]
//	wrong_secret = ["hermes-agent-3"]
//	gateway_down = ["hermes-agent-2"]      # every machine of these apps
//	gated_bind = true                      # dashboards on a non-loopback bind
//	terminal_nous = ["registry.fly.io/hermes-agent:nous"]
//
//	[platforms]                            # per app; default a seeded subset
//	hermes-agent-1 = ["telegram", "slack"]
//
//	[[park_platform]]                      # gateways on image park platform
//	image = "registry.fly.io/hermes-agent:v2"
//	platform = "telegram"
//	error_code = "telegram_token_lock"
//
//	[[crash_loop]]                         # exits "after" first serving
//	image = "registry.fly.io/hermes-agent:leaky"
//	after = "6s"
//	oom = true
//
//	[[platform_state]]                     # down on every image
//	app = "hermes-agent-2"
//	platform = "telegram"
//	state = "fatal"
//	error_code = "telegram_token_revoked"
//
//	[labels]                               # every machine's labels
//	hermes_auto_update = "true"
//
//	[app_labels.hermes-agent-5]            # per-app labels, replacing [labels]
//	hermes_auto_update = "false"
//
//	[workload]
//	busy_fraction = 0.3
//	turn_median = "45s"
//	turn_sigma = 1.2
//
//	[activity]                             # instead of [workload]: see Activity
//	turns_per_hour = 2                     # every key optional (defaults)
//	rate_sigma = 1.5
//	turn_median = "20s"
//	turn_sigma = 1.2
//	long_task_share = 0.02                 # default 0.02 here (DefaultActivity)
//	long_task_median = "2h"
//	long_task_sigma = 0.5
//
//	[faults."fly.update"]
//	p429 = 0.1
//	p5xx = 0.05
//	latency = "20ms"
//
//	[[leases]]
//	app = "hermes-agent-4"
//	owner = "someone@example.com"
//	ttl = "10m"
//
//	# Older Hermes feature sets and what Hermes does not count (hermes.go)
//	host_rejected = ["hermes-agent-6"]     # dashboards refusing migrator's Host (400)
//	[app_image]                            # per app, instead of image
//	hermes-agent-1 = "registry.fly.io/hermes-agent:old"
//	[hermes_versions]                      # the Hermes version an image reports and behaves as
//	"registry.fly.io/hermes-agent:old" = "0.17.2"
//	[[disable_platform]]                   # gateways on image report platform "disabled"
//	image = "registry.fly.io/hermes-agent:v2"
//	platform = "discord"
//	[[cron]]                               # a cron job on every machine of the app
//	app = "hermes-agent-1"
//	every = "5m"
//	duration = "90s"
//	# [activity] background_share = 0.1    # turns leaving a background delegation
type Scenario struct {
	Org               string                       `toml:"org"`
	Apps              int                          `toml:"apps"`
	MachinesPerApp    int                          `toml:"machines_per_app"`
	AppPrefix         string                       `toml:"app_prefix"`
	Image             string                       `toml:"image"`
	Regions           []string                     `toml:"regions"`
	Seed              int64                        `toml:"seed"`
	TimeScale         float64                      `toml:"time_scale"`
	FlyToken          string                       `toml:"fly_token"`
	DrainKey          string                       `toml:"drain_key"`
	BootTime          Duration                     `toml:"boot_time"`
	CheckDelay        Duration                     `toml:"check_delay"`
	GatewayStartup    Duration                     `toml:"gateway_startup"`
	WatcherDelay      Duration                     `toml:"watcher_delay"`
	MarkerTTL         Duration                     `toml:"marker_ttl"`
	DisableRateLimits bool                         `toml:"disable_rate_limits"`
	RateLimitsSimTime bool                         `toml:"rate_limits_sim_time"`
	WaitSimTime       bool                         `toml:"wait_sim_time"`
	APISimTime        bool                         `toml:"api_sim_time"`
	Labels            map[string]string            `toml:"labels"`
	AppLabels         map[string]map[string]string `toml:"app_labels"`
	Workload          struct {
		BusyFraction float64  `toml:"busy_fraction"`
		TurnMedian   Duration `toml:"turn_median"`
		TurnSigma    float64  `toml:"turn_sigma"`
	} `toml:"workload"`
	Activity *struct {
		TurnsPerHour   float64  `toml:"turns_per_hour"`
		RateSigma      float64  `toml:"rate_sigma"`
		TurnMedian     Duration `toml:"turn_median"`
		TurnSigma      float64  `toml:"turn_sigma"`
		LongTaskShare  *float64 `toml:"long_task_share"`
		LongTaskMedian Duration `toml:"long_task_median"`
		LongTaskSigma  float64  `toml:"long_task_sigma"`
		// Background delegations (hermes.go).
		BackgroundShare  float64  `toml:"background_share"`
		BackgroundMedian Duration `toml:"background_median"`
		BackgroundSigma  float64  `toml:"background_sigma"`
	} `toml:"activity"`
	AppImage        map[string]string `toml:"app_image"`
	HermesVersions  map[string]string `toml:"hermes_versions"`
	HostRejected    []string          `toml:"host_rejected"`
	DisablePlatform []struct {
		Image    string `toml:"image"`
		Platform string `toml:"platform"`
	} `toml:"disable_platform"`
	Cron []struct {
		App      string   `toml:"app"`
		Every    Duration `toml:"every"`
		Duration Duration `toml:"duration"`
	} `toml:"cron"`
	Faults        map[string]FaultSpec `toml:"faults"`
	FailImagePull []string             `toml:"fail_image_pull"`
	NeverHealthy  []string             `toml:"never_healthy"`
	WrongSecret   []string             `toml:"wrong_secret"`
	GatewayDown   []string             `toml:"gateway_down"`
	GatedBind     bool                 `toml:"gated_bind"`
	TerminalNous  []string             `toml:"terminal_nous"`
	Platforms     map[string][]string  `toml:"platforms"`
	ParkPlatform  []struct {
		Image     string `toml:"image"`
		Platform  string `toml:"platform"`
		ErrorCode string `toml:"error_code"`
	} `toml:"park_platform"`
	CrashLoop []struct {
		Image string   `toml:"image"`
		After Duration `toml:"after"`
		OOM   bool     `toml:"oom"`
	} `toml:"crash_loop"`
	PlatformState []struct {
		App       string `toml:"app"`
		Platform  string `toml:"platform"`
		State     string `toml:"state"`
		ErrorCode string `toml:"error_code"`
		Attention bool   `toml:"needs_attention"`
	} `toml:"platform_state"`
	Leases []struct {
		App     string   `toml:"app"`
		Machine string   `toml:"machine"` // empty: every machine of the app
		Owner   string   `toml:"owner"`
		TTL     Duration `toml:"ttl"`
	} `toml:"leases"`
}

// FaultSpec is RouteFaults with duration strings (scenario files and the
// /_sim/faults endpoint).
type FaultSpec struct {
	P429       float64  `toml:"p429" json:"p429"`
	P5xx       float64  `toml:"p5xx" json:"p5xx"`
	Latency    Duration `toml:"latency" json:"latency"`
	Hold       Duration `toml:"hold" json:"hold"`
	RetryAfter Duration `toml:"retry_after" json:"retry_after"`
	Status5xx  int      `toml:"status_5xx" json:"status_5xx"`
}

func (f FaultSpec) routeFaults() RouteFaults {
	return RouteFaults{P429: f.P429, P5xx: f.P5xx, Latency: f.Latency.Duration, Hold: f.Hold.Duration,
		RetryAfter: f.RetryAfter.Duration, Status5xx: f.Status5xx}
}

// Duration reads "90s"-style strings from TOML and JSON.
type Duration struct{ time.Duration }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("bad duration %q: %w", b, err)
	}
	d.Duration = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// ParseScenario reads a scenario file's contents; unknown keys are errors.
func ParseScenario(data []byte) (*Scenario, error) {
	var sc Scenario
	md, err := toml.Decode(string(data), &sc)
	if err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return nil, fmt.Errorf("scenario: unknown key %q", und[0].String())
	}
	if sc.TimeScale < 0 {
		return nil, errors.New("scenario: time_scale must not be negative")
	}
	for name, f := range sc.Faults {
		if f.P429 < 0 || f.P5xx < 0 || f.P429+f.P5xx > 1 {
			return nil, fmt.Errorf("scenario: faults for %s: probabilities must be in [0, 1] and sum to at most 1", name)
		}
	}
	return &sc, nil
}

// Config returns the simulator config the scenario describes (Clock left
// to the caller, who knows the time scale).
func (sc *Scenario) Config() Config {
	c := Config{
		Org: sc.Org, Apps: sc.Apps, MachinesPerApp: sc.MachinesPerApp, AppPrefix: sc.AppPrefix,
		Image: sc.Image, Regions: sc.Regions, Seed: sc.Seed, FlyToken: sc.FlyToken,
		BootTime: sc.BootTime.Duration, CheckDelay: sc.CheckDelay.Duration,
		GatewayStartup: sc.GatewayStartup.Duration, WatcherDelay: sc.WatcherDelay.Duration,
		MarkerTTL: sc.MarkerTTL.Duration, DisableRateLimits: sc.DisableRateLimits, GatedBind: sc.GatedBind,
		RateLimitsSimTime: sc.RateLimitsSimTime, WaitSimTime: sc.WaitSimTime, APISimTime: sc.APISimTime,
		Workload: Workload{BusyFraction: sc.Workload.BusyFraction, TurnMedian: sc.Workload.TurnMedian.Duration,
			TurnSigma: sc.Workload.TurnSigma},
	}
	if sa := sc.Activity; sa != nil {
		a := Activity{TurnsPerHour: sa.TurnsPerHour, RateSigma: sa.RateSigma, TurnMedian: sa.TurnMedian.Duration,
			TurnSigma: sa.TurnSigma, LongTaskShare: DefaultLongTaskShare, LongTaskMedian: sa.LongTaskMedian.Duration,
			LongTaskSigma: sa.LongTaskSigma, BackgroundShare: sa.BackgroundShare, BackgroundMedian: sa.BackgroundMedian.Duration,
			BackgroundSigma: sa.BackgroundSigma}
		if sa.LongTaskShare != nil {
			a.LongTaskShare = *sa.LongTaskShare
		}
		c.Workload.Activity = &a
	}
	if sc.DrainKey != "" {
		c.DrainKey = []byte(sc.DrainKey)
	}
	c.HermesVersions = sc.HermesVersions
	if len(sc.AppImage) > 0 {
		per := sc.AppImage
		c.AppImage = func(app string) string { return per[app] }
	}
	if len(sc.Platforms) > 0 {
		per := sc.Platforms
		c.Platforms = func(app string) []string {
			if p, ok := per[app]; ok {
				return p
			}
			return DefaultPlatforms
		}
	}
	if sc.Labels != nil || sc.AppLabels != nil {
		def, perApp := sc.Labels, sc.AppLabels
		if def == nil {
			def = map[string]string{"hermes_auto_update": "true"}
		}
		c.Labels = func(appName, _ string) map[string]string {
			if l, ok := perApp[appName]; ok {
				return l
			}
			return def
		}
	}
	return c
}

// Apply installs the scenario's faults on s. Unknown app names are errors.
func (sc *Scenario) Apply(s *Sim) error {
	if len(sc.Faults) > 0 {
		f := Faults{Routes: map[string]RouteFaults{}}
		for route, spec := range sc.Faults {
			f.Routes[route] = spec.routeFaults()
		}
		s.SetFaults(f)
	}
	for _, img := range sc.FailImagePull {
		s.FailImagePull(img)
	}
	for _, img := range sc.NeverHealthy {
		s.NeverHealthy(img)
	}
	for _, img := range sc.TerminalNous {
		s.TerminalNous(img)
	}
	for _, p := range sc.ParkPlatform {
		if p.Image == "" || p.Platform == "" {
			return errors.New("scenario: park_platform needs an image and a platform")
		}
		s.ParkPlatform(p.Image, p.Platform, p.ErrorCode)
	}
	for _, c := range sc.CrashLoop {
		if c.Image == "" || c.After.Duration <= 0 {
			return errors.New("scenario: crash_loop needs an image and a positive after")
		}
		s.CrashLoopOn(c.Image, CrashLoop{After: c.After.Duration, OOM: c.OOM})
	}
	for _, p := range sc.PlatformState {
		if s.MachineIDs(p.App) == nil {
			return fmt.Errorf("scenario: platform_state: no app %q", p.App)
		}
		if p.Platform == "" || p.State == "" {
			return errors.New("scenario: platform_state needs a platform and a state")
		}
		s.SetPlatformState(p.App, p.Platform, p.State, p.ErrorCode, p.Attention)
	}
	for _, a := range sc.HostRejected {
		if s.MachineIDs(a) == nil {
			return fmt.Errorf("scenario: host_rejected: no app %q", a)
		}
		s.SetHostRejected(a, true)
	}
	for _, d := range sc.DisablePlatform {
		if d.Image == "" || d.Platform == "" {
			return errors.New("scenario: disable_platform needs an image and a platform")
		}
		s.DisablePlatform(d.Image, d.Platform)
	}
	for _, c := range sc.Cron {
		ids := s.MachineIDs(c.App)
		if ids == nil {
			return fmt.Errorf("scenario: cron: no app %q", c.App)
		}
		if c.Every.Duration <= 0 || c.Duration.Duration <= 0 {
			return errors.New("scenario: cron needs a positive every and duration")
		}
		for _, id := range ids {
			s.AddCronJob(c.App, id, c.Every.Duration, c.Duration.Duration)
		}
	}
	for _, a := range sc.WrongSecret {
		if s.MachineIDs(a) == nil {
			return fmt.Errorf("scenario: wrong_secret: no app %q", a)
		}
		s.SetWrongSecret(a, true)
	}
	for _, a := range sc.GatewayDown {
		ids := s.MachineIDs(a)
		if ids == nil {
			return fmt.Errorf("scenario: gateway_down: no app %q", a)
		}
		for _, id := range ids {
			s.SetGatewayDown(a, id, true)
		}
	}
	for _, l := range sc.Leases {
		ids := s.MachineIDs(l.App)
		if ids == nil {
			return fmt.Errorf("scenario: leases: no app %q", l.App)
		}
		if l.Machine != "" {
			ids = []string{l.Machine}
			if s.lookupLocked(l.App, l.Machine) == nil {
				return fmt.Errorf("scenario: leases: no machine %s/%s", l.App, l.Machine)
			}
		}
		ttl := l.TTL.Duration
		if ttl <= 0 {
			ttl = time.Hour
		}
		owner := l.Owner
		if owner == "" {
			owner = "someone-else@tokens.fly.io"
		}
		for _, id := range ids {
			s.HoldLease(l.App, id, owner, ttl)
		}
	}
	return nil
}

func (s *Sim) lookupLocked(appName, id string) *machine {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lookup(appName, id)
}
