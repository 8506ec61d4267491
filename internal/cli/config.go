package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/robfig/cron/v3"

	"github.com/hermes-cloud/migrator/orchestrator"
	"github.com/hermes-cloud/migrator/policy"
	"github.com/hermes-cloud/migrator/store"
)

// The configuration file, migrator.toml. Every key is optional; a file is
// strict like the policy file: an unknown key or a bad value is one line,
// "FILE:LINE: message", and the command refuses to start (exit 2).
//
//	[policy.causes.auto-update]  # the drain policy: a policy file's schema
//	wait = "45m"                 # under policy ([policy.causes.*], [[policy.rules]])
//
//	[auto_update]
//	enabled = true                                   # default true
//	schedule = "CRON_TZ=America/New_York 0 3 * * *"  # standard cron or @every/@daily; zone default UTC
//	channel = "stable"                               # channel whose image the fleet follows
//	max_unavailable = "10%"                          # or 5; default 1
//	canary = 1                                       # default 0
//	failure_threshold = 2                            # default 0
//	pin = true                                       # pin a tag to its digest at each run; default true
//	[auto_update.selector]
//	org = "hermes"                                   # default $MIGRATOR_FLY_ORG
//	app_prefix = "hermes-agent-"
//	labels = { hermes_auto_update = "true" }         # opt-in label
//
//	[fleet]
//	cap = 100                 # machines disrupted at once, fleet-wide; 0 = no cap
//
//	[worker]
//	workers = 100             # jobs this replica runs at once
//	poll_interval = "5s"      # between two status reads of a draining agent
//	lease_wait = "15m"        # how long a machine waits for another deployer's Fly lease
//	transient_wait = "5m"     # how long a machine in a transient state (starting, restarting, …) is waited out
//
//	[notify]                  # notifications for on-call (see notify.go)
//	web_url = "http://localhost:8080"  # links to the web view; or $MIGRATOR_WEB_URL
//	[[notify.sinks]]
//	name = "oncall"
//	kind = "pagerduty"                 # slack, pagerduty, webhook
//	routing_key_env = "PD_ROUTING_KEY" # secrets are named here, read from the environment
//	min_severity = "error"             # info, warning, error, critical
//	events = ["run.paused", "run.failed"]  # default: every event
//
// Where a setting comes from, first match wins:
//
//	config file      $MIGRATOR_CONFIG (must exist), else ./migrator.toml if present, else none
//	policy           $MIGRATOR_POLICY or [policy], never both; else the built-in default
//	fleet cap        $MIGRATOR_FLEET_CAP, [fleet] cap, 100
//	workers          $MIGRATOR_WORKERS, [worker] workers, 100
//	poll interval    $MIGRATOR_POLL_INTERVAL, [worker] poll_interval, 5s
//	lease wait       $MIGRATOR_LEASE_WAIT, [worker] lease_wait, 15m
//	transient wait   $MIGRATOR_TRANSIENT_WAIT, [worker] transient_wait, 5m
//	selector org     [auto_update.selector] org, $MIGRATOR_FLY_ORG
//
// Secrets (DATABASE_URL, FLY_API_TOKEN, MIGRATOR_DRAIN_KEY, MIGRATOR_SEAL_KEY) come only from
// the environment, never from the file.
const (
	configFileEnv     = "MIGRATOR_CONFIG"
	defaultConfigFile = "migrator.toml"
	flyOrgEnv         = "MIGRATOR_FLY_ORG"
)

// settings is the effective configuration: the environment over the file
// over the defaults (see above).
type settings struct {
	configFile   string // "" when there is none
	policy       *policy.Policy
	policySource string // where the policy came from, for logs
	fleetCap     int
	workers      int
	pollInterval time.Duration
	// leaseWait bounds the wait for another deployer's Fly lease
	// (orchestrator.Config.LeaseWait).
	leaseWait time.Duration
	// transientWait bounds the wait for a machine in a transient state
	// (orchestrator.Config.TransientWait).
	transientWait time.Duration
	autoUpdate    *autoUpdateSettings // nil: off
	notify        notifyFile          // the [notify] table (secrets come from the environment: notify.go)
}

// autoUpdateSettings is the [auto_update] table, validated.
type autoUpdateSettings struct {
	spec             string
	schedule         cron.Schedule
	channel          string
	selector         store.Selector
	maxUnavailable   string
	canary           int
	failureThreshold int
	pin              bool
}

// config builds the orchestrator's auto-update config; pin resolves tags
// to digests, used unless the file says pin = false. Only serve needs it
// complete: other commands do not care that the org is missing.
func (a *autoUpdateSettings) config(file string, pin func(context.Context, string) (string, error)) (orchestrator.AutoUpdateConfig, error) {
	if a.selector.Org == "" && len(a.selector.Apps) == 0 {
		return orchestrator.AutoUpdateConfig{}, usagef("%s: [auto_update.selector] has no org and %s is not set", file, flyOrgEnv)
	}
	c := orchestrator.AutoUpdateConfig{Schedule: a.schedule, Spec: a.spec, Channel: a.channel, Selector: a.selector,
		MaxUnavailable: a.maxUnavailable, Canary: a.canary, FailureThreshold: a.failureThreshold}
	if a.pin {
		c.Pin = pin
	}
	return c, nil
}

// fileConfig is what a config file sets; nil fields are not set.
type fileConfig struct {
	path         string
	policy       *policy.Policy
	autoUpdate   *autoUpdateSettings
	autoUpdateOn bool
	fleetCap     *int
	workers      *int
	pollInterval *time.Duration
	notify       notifyFile
	leaseWait    *time.Duration
	// transientWait is [worker] transient_wait.
	transientWait *time.Duration
}

// loadSettings reads the config file (if any) and the environment.
func loadSettings(e *env) (*settings, error) {
	fc, err := loadConfigFile(e)
	if err != nil {
		return nil, err
	}
	s := &settings{configFile: fc.path, notify: fc.notify}

	polPath := strings.TrimSpace(e.getenv(policyFileEnv))
	switch {
	case polPath != "" && fc.policy != nil:
		return nil, usagef("%s=%s and the [policy] table of %s both set a policy: keep one", policyFileEnv, polPath, fc.path)
	case polPath != "":
		data, err := os.ReadFile(polPath)
		if err != nil {
			return nil, usagef("%s: %v", policyFileEnv, err)
		}
		if s.policy, err = policy.Parse(polPath, data); err != nil {
			return nil, usagef("%v", err)
		}
		s.policySource = polPath
	case fc.policy != nil:
		s.policy, s.policySource = fc.policy, fc.path+" [policy]"
	default:
		s.policy, s.policySource = policy.Default(), "built-in default"
	}

	if s.fleetCap, err = envInt(e, fleetCapEnv, deref(fc.fleetCap, defaultFleetCap)); err != nil {
		return nil, err
	}
	if s.workers, err = envInt(e, workersEnv, deref(fc.workers, defaultWorkers)); err != nil {
		return nil, err
	}
	if s.pollInterval, err = envDuration(e, pollIntervalEnv, deref(fc.pollInterval, 5*time.Second)); err != nil {
		return nil, err
	}
	if s.leaseWait, err = envDuration(e, leaseWaitEnv, deref(fc.leaseWait, orchestrator.DefaultLeaseWait)); err != nil {
		return nil, err
	}
	if s.transientWait, err = envDuration(e, transientWaitEnv, deref(fc.transientWait, orchestrator.DefaultTransientWait)); err != nil {
		return nil, err
	}
	if fc.autoUpdate != nil && fc.autoUpdateOn {
		au := *fc.autoUpdate
		if au.selector.Org == "" && len(au.selector.Apps) == 0 {
			au.selector.Org = strings.TrimSpace(e.getenv(flyOrgEnv))
		}
		s.autoUpdate = &au
	}
	return s, nil
}

func deref[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// loadConfigFile finds and parses the config file; no file is an empty
// config.
func loadConfigFile(e *env) (*fileConfig, error) {
	path := strings.TrimSpace(e.getenv(configFileEnv))
	if path == "" {
		if _, err := os.Stat(defaultConfigFile); errors.Is(err, fs.ErrNotExist) {
			return &fileConfig{}, nil
		}
		path = defaultConfigFile
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, usagef("config file: %v", err)
	}
	fc, err := parseConfig(path, data)
	if err != nil {
		return nil, usagef("%v", err)
	}
	return fc, nil
}

// rawTable takes a value undecoded (and, as a toml.Unmarshaler, marks the
// keys below it decoded) so its keys are checked here, with their lines.
type rawTable struct {
	v   any
	set bool
}

func (t *rawTable) UnmarshalTOML(v any) error {
	t.v, t.set = v, true
	return nil
}

// table returns the table at key, or a one-line error when it is not one.
func (d *configDecoder) table(key string, t rawTable) (map[string]any, error) {
	m, ok := t.v.(map[string]any)
	if !ok {
		return nil, d.errf([]string{key}, "want a table, got %s", describeValue(t.v))
	}
	return m, nil
}

type rawConfig struct {
	Policy     toml.Primitive `toml:"policy"`
	AutoUpdate rawTable       `toml:"auto_update"`
	Fleet      rawTable       `toml:"fleet"`
	Worker     rawTable       `toml:"worker"`
	Notify     rawTable       `toml:"notify"`
}

// configError is a problem in the config file, one line like policy.Error.
func configError(file string, line int, format string, args ...any) error {
	return &policy.Error{File: file, Line: line, Msg: strings.Join(strings.Fields(fmt.Sprintf(format, args...)), " ")}
}

// parseConfig parses and validates a config file.
func parseConfig(file string, data []byte) (*fileConfig, error) {
	var raw rawConfig
	md, err := toml.Decode(string(data), &raw)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, configError(file, pe.Position.Line, "%s", pe.Message)
		}
		return nil, configError(file, 0, "%v", err)
	}
	fc := &fileConfig{path: file}
	if md.IsDefined("policy") {
		if fc.policy, err = policy.ParseTable(file, data, &md, raw.Policy, "policy"); err != nil {
			return nil, err
		}
	}
	if un := md.Undecoded(); len(un) > 0 {
		return nil, configError(file, keyLine(data, un[0]), "unknown key %s (known: policy, auto_update, fleet, worker, notify)", un[0])
	}
	d := &configDecoder{file: file, data: data}
	if raw.AutoUpdate.set {
		m, err := d.table("auto_update", raw.AutoUpdate)
		if err != nil {
			return nil, err
		}
		if fc.autoUpdate, fc.autoUpdateOn, err = d.autoUpdate(m); err != nil {
			return nil, err
		}
	}
	if raw.Fleet.set {
		m, err := d.table("fleet", raw.Fleet)
		if err != nil {
			return nil, err
		}
		for _, k := range d.keys([]string{"fleet"}, m) {
			path := []string{"fleet", k}
			switch k {
			case "cap":
				n, err := d.integer(path, m[k], 0)
				if err != nil {
					return nil, err
				}
				fc.fleetCap = &n
			default:
				return nil, d.unknown(path, "cap")
			}
		}
	}
	if raw.Notify.set {
		m, err := d.table("notify", raw.Notify)
		if err != nil {
			return nil, err
		}
		if fc.notify, err = d.notify(m); err != nil {
			return nil, err
		}
	}
	if raw.Worker.set {
		m, err := d.table("worker", raw.Worker)
		if err != nil {
			return nil, err
		}
		for _, k := range d.keys([]string{"worker"}, m) {
			path := []string{"worker", k}
			switch k {
			case "workers":
				n, err := d.integer(path, m[k], 1)
				if err != nil {
					return nil, err
				}
				fc.workers = &n
			case "poll_interval":
				v, err := d.duration(path, m[k])
				if err != nil {
					return nil, err
				}
				fc.pollInterval = &v
			case "lease_wait":
				v, err := d.duration(path, m[k])
				if err != nil {
					return nil, err
				}
				fc.leaseWait = &v
			case "transient_wait":
				v, err := d.duration(path, m[k])
				if err != nil {
					return nil, err
				}
				fc.transientWait = &v
			default:
				return nil, d.unknown(path, "workers, poll_interval, lease_wait, transient_wait")
			}
		}
	}
	return fc, nil
}

// configDecoder checks the raw tables, naming the line of each problem.
type configDecoder struct {
	file string
	data []byte
}

func (d *configDecoder) errf(path []string, format string, args ...any) error {
	return configError(d.file, keyLine(d.data, path), "%s: %s", toml.Key(path), fmt.Sprintf(format, args...))
}

func (d *configDecoder) unknown(path []string, known string) error {
	return configError(d.file, keyLine(d.data, path), "unknown key %s (known: %s)", toml.Key(path), known)
}

// keys lists a table's keys in file order, so the first problem is reported.
func (d *configDecoder) keys(path []string, m map[string]any) []string {
	ks := slices.Sorted(maps.Keys(m))
	lines := make(map[string]int, len(ks))
	for _, k := range ks {
		lines[k] = keyLine(d.data, append(slices.Clone(path), k))
	}
	slices.SortStableFunc(ks, func(a, b string) int { return lines[a] - lines[b] })
	return ks
}

func (d *configDecoder) str(path []string, v any) (string, error) {
	s, ok := v.(string)
	if !ok {
		return "", d.errf(path, "want a string, got %s", describeValue(v))
	}
	return s, nil
}

func (d *configDecoder) boolean(path []string, v any) (bool, error) {
	b, ok := v.(bool)
	if !ok {
		return false, d.errf(path, "want true or false, got %s", describeValue(v))
	}
	return b, nil
}

func (d *configDecoder) integer(path []string, v any, minimum int) (int, error) {
	n, ok := v.(int64)
	if !ok || n < int64(minimum) || n > 1_000_000 {
		return 0, d.errf(path, "want a whole number from %d to 1000000, got %s", minimum, describeValue(v))
	}
	return int(n), nil
}

func (d *configDecoder) duration(path []string, v any) (time.Duration, error) {
	s, err := d.str(path, v)
	if err != nil {
		return 0, err
	}
	dur, err := time.ParseDuration(s)
	if err != nil || dur <= 0 || dur > time.Hour {
		return 0, d.errf(path, "want a duration from 1ms to 1h like \"5s\", got %q", s)
	}
	return dur, nil
}

func (d *configDecoder) autoUpdate(m map[string]any) (*autoUpdateSettings, bool, error) {
	au := &autoUpdateSettings{maxUnavailable: "1", pin: true}
	enabled := true
	base := []string{"auto_update"}
	for _, k := range d.keys(base, m) {
		path, v := append(slices.Clone(base), k), m[k]
		var err error
		switch k {
		case "enabled":
			enabled, err = d.boolean(path, v)
		case "schedule":
			au.spec, au.schedule, err = d.schedule(path, v)
		case "channel":
			if au.channel, err = d.str(path, v); err == nil && !validChannel(au.channel) {
				err = d.errf(path, "%q is not a channel name (letters, digits, . _ -; at most 64)", au.channel)
			}
		case "max_unavailable":
			au.maxUnavailable, err = d.maxUnavailable(path, v)
		case "canary":
			au.canary, err = d.integer(path, v, 0)
		case "failure_threshold":
			au.failureThreshold, err = d.integer(path, v, 0)
		case "pin":
			au.pin, err = d.boolean(path, v)
		case "selector":
			err = d.selector(path, v, &au.selector)
		default:
			err = d.unknown(path, "enabled, schedule, channel, selector, max_unavailable, canary, failure_threshold, pin")
		}
		if err != nil {
			return nil, false, err
		}
	}
	if enabled {
		if au.schedule == nil {
			return nil, false, d.errf(base, "schedule is required (e.g. schedule = \"CRON_TZ=UTC 0 3 * * *\"), or set enabled = false")
		}
		if au.channel == "" {
			return nil, false, d.errf(base, "channel is required (the channel whose image the fleet follows), or set enabled = false")
		}
	}
	return au, enabled, nil
}

func (d *configDecoder) schedule(path []string, v any) (string, cron.Schedule, error) {
	spec, err := d.str(path, v)
	if err != nil {
		return "", nil, err
	}
	spec = strings.TrimSpace(spec)
	full := spec
	if strings.HasPrefix(spec, "CRON_TZ=") || strings.HasPrefix(spec, "TZ=") {
		// cron's parser slices up to the first space: a zone alone would panic.
		if !strings.Contains(spec, " ") {
			return "", nil, d.errf(path, "%q: want \"CRON_TZ=Zone\" followed by a schedule", spec)
		}
	} else {
		full = "CRON_TZ=UTC " + spec // not the host's local zone: the same schedule everywhere
	}
	sched, err := cron.ParseStandard(full)
	if err != nil {
		return "", nil, d.errf(path, "%q: %v (want 5 cron fields like \"0 3 * * *\", or @daily, @every 1h)", spec, err)
	}
	if sched.Next(time.Now()).IsZero() {
		return "", nil, d.errf(path, "%q never fires", spec)
	}
	return spec, sched, nil
}

func (d *configDecoder) maxUnavailable(path []string, v any) (string, error) {
	var spec string
	switch x := v.(type) {
	case int64:
		spec = strconv.FormatInt(x, 10)
	case string:
		spec = x
	default:
		return "", d.errf(path, "want a count like 5 or a percentage like \"10%%\", got %s", describeValue(v))
	}
	if _, err := orchestrator.MaxUnavailable(spec, 1); err != nil {
		return "", d.errf(path, "%v", err)
	}
	return spec, nil
}

func (d *configDecoder) selector(path []string, v any, sel *store.Selector) error {
	m, ok := v.(map[string]any)
	if !ok {
		return d.errf(path, "want a table, got %s", describeValue(v))
	}
	for _, k := range d.keys(path, m) {
		kp, v := append(slices.Clone(path), k), m[k]
		var err error
		switch k {
		case "org":
			sel.Org, err = d.str(kp, v)
		case "app_prefix":
			sel.AppPrefix, err = d.str(kp, v)
		case "labels":
			sel.Labels, err = d.labels(kp, v)
		default:
			err = d.unknown(kp, "org, app_prefix, labels")
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (d *configDecoder) labels(path []string, v any) (map[string]string, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return nil, d.errf(path, "want a table like { hermes_auto_update = \"true\" }, got %s", describeValue(v))
	}
	out := make(map[string]string, len(m))
	for _, k := range d.keys(path, m) {
		s, err := d.str(append(slices.Clone(path), k), m[k])
		if err != nil {
			return nil, err
		}
		if k == "" {
			return nil, d.errf(path, "empty label name")
		}
		out[k] = s
	}
	return out, nil
}

func validChannel(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

func describeValue(v any) string {
	switch x := v.(type) {
	case string:
		return strconv.Quote(x)
	case int64:
		return "integer " + strconv.FormatInt(x, 10)
	case float64:
		return "number " + strconv.FormatFloat(x, 'g', -1, 64)
	case bool:
		return "boolean " + strconv.FormatBool(x)
	case map[string]any:
		return "a table"
	case []any, []map[string]any:
		return "an array"
	case time.Time:
		return "a date-time"
	}
	return fmt.Sprintf("%T", v)
}

// keyLine finds the line of the key at path in a TOML document (0 when
// unknown). The toml package knows every key's position but only shows it
// in a decoding error, so the document is decoded into a type made for the
// path whose innermost value always refuses itself; the error carries the
// line.
func keyLine(data []byte, path []string) int {
	if len(path) == 0 {
		return 0
	}
	t := reflect.TypeFor[lineProbe]()
	for i := len(path) - 1; i >= 0; i-- {
		if strings.ContainsAny(path[i], ",") { // a struct tag cannot name it
			return 0
		}
		t = reflect.StructOf([]reflect.StructField{{Name: "K", Type: t,
			Tag: reflect.StructTag("toml:" + strconv.Quote(path[i]))}})
	}
	_, err := toml.Decode(string(data), reflect.New(t).Interface())
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return pe.Position.Line
	}
	return 0
}

type lineProbe struct{}

var errProbe = errors.New("probe")

func (lineProbe) UnmarshalTOML(any) error { return errProbe }
