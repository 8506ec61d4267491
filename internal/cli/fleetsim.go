//go:build !release

package cli

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hermes-cloud/migrator/internal/clock"
	"github.com/hermes-cloud/migrator/internal/testkit/fleetsim"
)

func init() { register(newFleetsimCmd) }

func newFleetsimCmd(e *env) *cobra.Command {
	var (
		apps, perApp      int
		listen, scenario  string
		seed              int64
		scale, busy       float64
		disableRateLimits bool
		activity          bool
		turnsPerHour      float64
		longTaskShare     float64
		legacy, noSecret  int
		realFleet         bool
		leaseFormat       string
		stoppedApps       int
		suspendedApps     int
		gated             bool
		platforms         string
		parkPlatform      []string
		terminalNous      []string
		crashLoop         []string
		platformDown      []string
		drainTurns        string
		apiSimTime        bool
		hostile           int
	)
	cmd := &cobra.Command{
		Use:   "fleetsim --apps N --listen 127.0.0.1:PORT",
		Short: "Run the fleet simulator (Fly Machines API + Hermes dashboards) until interrupted",
		Long: "Run the fleet simulator: a loopback server with the Fly Machines API subset migrator uses\n" +
			"and one Hermes dashboard per machine, with agents doing scripted work. It prints, on\n" +
			"stdout, the environment (FLY_API_TOKEN, FLY_FLAPS_BASE_URL, MIGRATOR_GATEWAY_URL,\n" +
			"MIGRATOR_DRAIN_KEY, MIGRATOR_SEAL_KEY, MIGRATOR_FLY_ORG, MIGRATOR_FLY_REGISTRY_URL (run\n" +
			"create pins registry.fly.io images at the simulator's registry), and with --time-scale\n" +
			"MIGRATOR_CLOCK, so migrator runs on the simulated timeline) that points migrator at it, then\n" +
			"serves until SIGINT. The token, drain key and seal key are throwaway values of this\n" +
			"simulator.\n\n" +
			"--activity makes the agents talk: per agent, user turns arrive as a Poisson process at\n" +
			"the agent's own rate (log-normal across the fleet around --turns-per-hour: most quiet,\n" +
			"a few chatty), with heavy-tailed turn lengths, and --long-task-share of them in a\n" +
			"multi-hour task; turns arriving while an agent drains are refused, turns in flight at\n" +
			"the recreate interrupted (GET /_sim/state: activity, refusals, each machine's\n" +
			"DrainingTime).\n\n" +
			"New-image faults the agents' own signals show: --park-platform IMAGE=PLATFORM[:CODE] (the\n" +
			"gateway on IMAGE parks PLATFORM as fatal with error_code CODE, degraded), --terminal-nous\n" +
			"IMAGE (nous_session_valid terminal), --crash-loop IMAGE=AFTER[:oom] (the new instance exits\n" +
			"AFTER after first serving, Fly exit events, restarted by the restart policy); and\n" +
			"--platform-down APP=PLATFORM[:CODE] (down on every image: down before a migration too).\n" +
			"--hostile N makes the first N apps' agents hostile, as a tenant who controls the machine can:\n" +
			"every other answer with a 1 MiB X-Request-Id, 1,000 platforms whose names and errors carry\n" +
			"Slack mentions, terminal escapes and spreadsheet formulas, and a platform named\n" +
			"\"" + fleetsim.HostilePlatform + "\" that fails on any image but the first\n" +
			"(a migration rolls it back).\n" +
			"--gated-bind serves the dashboards as on a non-loopback bind: an older Hermes answers the\n" +
			"drain route 401 before routing, like an agent without a secret.\n\n" +
			"For the benchmark (`migrator bench --scenario replicas` runs it as its own process):\n" +
			"--drain-turns MEDIAN[:SIGMA] starts a turn of agent work on a machine whenever a drain is\n" +
			"begun on it, log-normal (default σ 1) from --seed and the machine's name, so every drain\n" +
			"waits its own length; --api-sim-time puts Fly's rate limits and /wait timeouts on the\n" +
			"simulated clock (for clients that pace themselves on MIGRATOR_CLOCK).\n\n" +
			"A --scenario TOML file describes the fleet, workload and faults (see package fleetsim);\n" +
			"flags given explicitly override it. Observe and inject faults at runtime through\n" +
			"GET /_sim/state, POST /_sim/faults and POST /_sim/control (Bearer FLY_API_TOKEN).",
		Example: "  migrator fleetsim --apps 20 --listen 127.0.0.1:8719\n" +
			"  migrator fleetsim --apps 5 --time-scale 10 > fleetsim.env & sleep 1; . ./fleetsim.env\n" +
			"  migrator fleetsim --scenario faults.toml --listen 127.0.0.1:0 --seed 7\n" +
			"  migrator fleetsim --apps 200 --activity --turns-per-hour 4 --time-scale 10\n" +
			"  migrator fleetsim --apps 10 --legacy-apps 3 --unprovisioned-apps 8   # a fleet before enrolment\n" +
			"  migrator fleetsim --real-fleet --time-scale 10   # apps 1-9: one machine of each kind a real fleet holds\n" +
			"  migrator fleetsim --apps 12 --stopped-apps 2 --suspended-apps 2   # the last apps' agents are down\n" +
			"  migrator fleetsim --apps 5 --time-scale 10 --crash-loop registry.fly.io/hermes-agent:v2=6s\n" +
			"  migrator fleetsim --apps 5 --platforms telegram,slack --park-platform registry.fly.io/hermes-agent:v2=telegram:telegram_token_lock",
		Args: checkArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := fleetsim.Config{Workload: fleetsim.Workload{BusyFraction: busy}}
			var sc *fleetsim.Scenario
			if scenario != "" {
				data, err := os.ReadFile(scenario)
				if err != nil {
					return usagef("%s: --scenario: %v", cmd.CommandPath(), err)
				}
				if sc, err = fleetsim.ParseScenario(data); err != nil {
					return usagef("%s: --scenario %s: %v", cmd.CommandPath(), scenario, err)
				}
				cfg = sc.Config()
				if sc.TimeScale > 0 && !cmd.Flags().Changed("time-scale") {
					scale = sc.TimeScale
				}
				if cmd.Flags().Changed("busy-fraction") {
					cfg.Workload.BusyFraction = busy
				}
			}
			flags := cmd.Flags()
			if flags.Changed("apps") || cfg.Apps == 0 {
				cfg.Apps = apps
			}
			if flags.Changed("machines-per-app") || cfg.MachinesPerApp == 0 {
				cfg.MachinesPerApp = perApp
			}
			if flags.Changed("seed") {
				cfg.Seed = seed
			}
			if flags.Changed("disable-rate-limits") {
				cfg.DisableRateLimits = disableRateLimits
			}
			if activity {
				if flags.Changed("busy-fraction") {
					return usagef("%s: --activity and --busy-fraction exclude each other", cmd.CommandPath())
				}
				a := fleetsim.DefaultActivity()
				if cfg.Workload.Activity != nil {
					a = *cfg.Workload.Activity
				}
				if flags.Changed("turns-per-hour") || cfg.Workload.Activity == nil {
					a.TurnsPerHour = turnsPerHour
				}
				if flags.Changed("long-task-share") || cfg.Workload.Activity == nil {
					a.LongTaskShare = longTaskShare
				}
				cfg.Workload = fleetsim.Workload{Activity: &a}
			} else if flags.Changed("turns-per-hour") || flags.Changed("long-task-share") {
				return usagef("%s: --turns-per-hour and --long-task-share need --activity", cmd.CommandPath())
			} else if cfg.Workload.Activity != nil && flags.Changed("busy-fraction") {
				return usagef("%s: --busy-fraction: the scenario has an [activity] section", cmd.CommandPath())
			}
			if legacy < 0 || noSecret < 0 {
				return usagef("%s: --legacy-apps and --unprovisioned-apps must not be negative", cmd.CommandPath())
			}
			cfg.DayOne(legacy, noSecret)
			if drainTurns != "" {
				dt, err := parseDrainTurns(drainTurns)
				if err != nil {
					return usagef("%s: %v", cmd.CommandPath(), err)
				}
				cfg.Workload.AtDrain = &dt
			}
			cfg.APISimTime = apiSimTime
			if flags.Changed("hostile") {
				cfg.Hostile = hostile
			}
			if stoppedApps < 0 || suspendedApps < 0 || stoppedApps+suspendedApps > cfg.Apps {
				return usagef("%s: --stopped-apps and --suspended-apps must be 0 or more and together at most --apps", cmd.CommandPath())
			}
			if stoppedApps+suspendedApps > 0 {
				if realFleet {
					return usagef("%s: --real-fleet already shapes the fleet; --stopped-apps and --suspended-apps do not go with it", cmd.CommandPath())
				}
				cfg.Shape = fleetsim.DownApps(cfg.AppPrefix, cfg.Apps, cfg.MachinesPerApp, stoppedApps, suspendedApps)
			}
			if realFleet {
				cfg.RealFleet()
			}
			switch leaseFormat {
			case "", fleetsim.LeaseTimeRFC3339, fleetsim.LeaseTimeGo:
				cfg.LeaseConflictFormat = leaseFormat
			default:
				return usagef("%s: --lease-conflict-format %q: want %s or %s", cmd.CommandPath(), leaseFormat, fleetsim.LeaseTimeRFC3339, fleetsim.LeaseTimeGo)
			}
			if gated {
				cfg.GatedBind = true
			}
			if platforms != "" {
				list := strings.Split(platforms, ",")
				for i := range list {
					if list[i] = strings.TrimSpace(list[i]); list[i] == "" {
						return usagef("%s: --platforms %q: want names separated by commas, e.g. telegram,slack", cmd.CommandPath(), platforms)
					}
				}
				cfg.Platforms = func(string) []string { return list }
			}
			faults, err := parseSimFaults(parkPlatform, terminalNous, crashLoop, platformDown)
			if err != nil {
				return usagef("%s: %v", cmd.CommandPath(), err)
			}
			switch {
			case cfg.Apps < 1:
				return usagef("%s: --apps must be at least 1, got %d", cmd.CommandPath(), cfg.Apps)
			case cfg.MachinesPerApp < 1:
				return usagef("%s: --machines-per-app must be at least 1, got %d", cmd.CommandPath(), cfg.MachinesPerApp)
			case activity && (turnsPerHour <= 0 || turnsPerHour > fleetsim.MaxTurnsPerHour):
				return usagef("%s: --turns-per-hour must be in (0, %g], got %g", cmd.CommandPath(), fleetsim.MaxTurnsPerHour, turnsPerHour)
			case activity && (longTaskShare < 0 || longTaskShare > 1):
				return usagef("%s: --long-task-share must be in [0, 1], got %g", cmd.CommandPath(), longTaskShare)
			case scale <= 0:
				return usagef("%s: --time-scale must be positive, got %g", cmd.CommandPath(), scale)
			case listen == "":
				return usagef("%s: --listen is required", cmd.CommandPath())
			}
			cfg.Clock = clock.Real()
			if scale != 1 {
				cfg.Clock = clock.NewScaled(time.Time{}, scale)
			}
			sim, err := fleetsim.New(cfg)
			if err != nil {
				return usagef("%s: %v", cmd.CommandPath(), err)
			}
			if sc != nil {
				if err := sc.Apply(sim); err != nil {
					return usagef("%s: --scenario %s: %v", cmd.CommandPath(), scenario, err)
				}
			}
			if err := faults.apply(sim); err != nil {
				return usagef("%s: %v", cmd.CommandPath(), err)
			}
			if err := sim.Start(listen); err != nil {
				return err
			}
			defer sim.Close()
			env := sim.Env()
			if sc, ok := cfg.Clock.(*clock.Scaled); ok {
				// serve, run follow and status share the simulated timeline:
				// drain waits, bakes and Fly's event times agree.
				env[clockEnv] = fmt.Sprintf("scaled:%g:%d", sc.Factor(), sc.Start().UnixNano())
			}
			keys := make([]string, 0, len(env))
			for k := range env {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				fmt.Fprintf(e.stdout, "export %s=%s\n", k, shellQuote(env[k]))
			}
			fmt.Fprintf(e.stderr, "fleetsim: %d apps × %d machines at %s (time ×%g); interrupt to stop\n",
				cfg.Apps, cfg.MachinesPerApp, sim.URL(), scale)
			if realFleet {
				prefix := cfg.AppPrefix
				if prefix == "" {
					prefix = fleetsim.DefaultAppPrefix
				}
				for i, k := range fleetsim.RealFleetKinds {
					fmt.Fprintf(e.stderr, "fleetsim:   %s%d: %s\n", prefix, i+1, k)
				}
			}
			<-cmd.Context().Done()
			fmt.Fprintln(e.stderr, "fleetsim: stopped")
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&apps, "apps", fleetsim.DefaultApps, "number of apps (hermes-agent-1 … N)")
	f.IntVar(&perApp, "machines-per-app", fleetsim.DefaultMachinesPerApp, "machines in each app")
	f.StringVar(&listen, "listen", "127.0.0.1:0", "address to serve on (port 0 picks a free one)")
	f.Int64Var(&seed, "seed", 0, "seed for machine ids, workload and faults")
	f.Float64Var(&scale, "time-scale", 1, "simulated seconds per wall second")
	f.Float64Var(&busy, "busy-fraction", 0.2, "fraction of agents with work in flight at any time, in [0,1)")
	f.BoolVar(&activity, "activity", false, "agents talk: Poisson user turns at per-agent rates (the activity model) instead of --busy-fraction")
	f.Float64Var(&turnsPerHour, "turns-per-hour", fleetsim.DefaultTurnsPerHour, "with --activity: the median agent's user turns per hour")
	f.Float64Var(&longTaskShare, "long-task-share", fleetsim.DefaultLongTaskShare, "with --activity: share of agents in a multi-hour task at the start")
	f.StringVar(&scenario, "scenario", "", "TOML file describing the fleet, workload and faults")
	f.BoolVar(&disableRateLimits, "disable-rate-limits", false, "do not enforce Fly's rate limits")
	f.IntVar(&hostile, "hostile", 0, "the first N apps run hostile agents (huge headers, 1,000 platforms, escapes, mentions, formulas; a platform that fails after an update)")
	f.IntVar(&legacy, "legacy-apps", 0, "the first N apps run "+fleetsim.LegacyImage+", a Hermes without the drain route (404)")
	f.IntVar(&noSecret, "unprovisioned-apps", 0, "the first N apps have no drain secret (401 until recreated after `migrator secret sync`)")
	f.BoolVar(&realFleet, "real-fleet", false, "apps 1-9 are one of each kind a real fleet holds: started, stopped, suspended, autostop, with release-command and console machines, on an unreachable host, multi-container, on a tag that can move ("+fleetsim.StableImage+"), and one for another deployer's lease")
	f.IntVar(&stoppedApps, "stopped-apps", 0, "the last N apps' machines are stopped at the start")
	f.IntVar(&suspendedApps, "suspended-apps", 0, "the N apps before the stopped ones are suspended (autostop = suspend: a user turn wakes them)")
	f.StringVar(&leaseFormat, "lease-conflict-format", "", "how a 409 on a held lease states its expiry: rfc3339 (default) or go (Fly's API reference, with \"code\")")
	f.BoolVar(&gated, "gated-bind", false, "dashboards on a non-loopback bind: a login gate answers 401 before routing (an older Hermes too)")
	f.StringVar(&platforms, "platforms", "", "every agent's messaging platforms, e.g. telegram,slack (default: a seeded subset of telegram, discord, slack)")
	f.StringArrayVar(&parkPlatform, "park-platform", nil, "IMAGE=PLATFORM[:CODE]: gateways on IMAGE park PLATFORM (fatal, error_code CODE; repeatable)")
	f.StringArrayVar(&terminalNous, "terminal-nous", nil, "IMAGE: gateways on IMAGE report nous_session_valid terminal (repeatable)")
	f.StringArrayVar(&crashLoop, "crash-loop", nil, "IMAGE=AFTER[:oom]: instances on IMAGE exit AFTER (e.g. 6s) after first serving, again after each restart (repeatable)")
	f.StringArrayVar(&platformDown, "platform-down", nil, "APP=PLATFORM[:CODE]: that agent's PLATFORM is fatal on every image (repeatable)")
	f.StringVar(&drainTurns, "drain-turns", "", "MEDIAN[:SIGMA]: a turn of agent work starts with every drain begun, log-normal (the benchmark's drain model)")
	f.BoolVar(&apiSimTime, "api-sim-time", false, "Fly's rate limits and /wait timeouts on the simulated clock (clients pacing on MIGRATOR_CLOCK)")
	return cmd
}

// parseDrainTurns reads --drain-turns MEDIAN[:SIGMA] (σ default 1).
func parseDrainTurns(v string) (fleetsim.DrainTurns, error) {
	med, sig, hasSigma := strings.Cut(strings.TrimSpace(v), ":")
	dt := fleetsim.DrainTurns{Sigma: 1}
	d, err := time.ParseDuration(med)
	if err != nil || d <= 0 {
		return dt, fmt.Errorf("--drain-turns %q: want MEDIAN[:SIGMA] with a positive duration, e.g. 30s:1", v)
	}
	dt.Median = d
	if hasSigma {
		f, err := strconv.ParseFloat(sig, 64)
		if err != nil || f < 0 || f > 5 {
			return dt, fmt.Errorf("--drain-turns %q: σ must be a number in [0, 5]", v)
		}
		dt.Sigma = f
	}
	return dt, nil
}

// simFaults are fleetsim's fault flags, parsed before the simulator starts.
type simFaults struct {
	park  []struct{ image, platform, code string }
	nous  []string
	crash []struct {
		image string
		loop  fleetsim.CrashLoop
	}
	down []struct{ app, platform, code string }
}

func parseSimFaults(park, nous, crash, down []string) (simFaults, error) {
	var f simFaults
	for _, v := range park {
		img, rest, ok := strings.Cut(v, "=")
		platform, code, _ := strings.Cut(rest, ":")
		if !ok || strings.TrimSpace(img) == "" || strings.TrimSpace(platform) == "" {
			return f, fmt.Errorf("--park-platform %q: want IMAGE=PLATFORM[:CODE], e.g. registry.fly.io/hermes-agent:v2=telegram:telegram_token_lock", v)
		}
		f.park = append(f.park, struct{ image, platform, code string }{strings.TrimSpace(img), strings.TrimSpace(platform), strings.TrimSpace(code)})
	}
	for _, v := range nous {
		if strings.TrimSpace(v) == "" {
			return f, fmt.Errorf("--terminal-nous: want an image")
		}
		f.nous = append(f.nous, strings.TrimSpace(v))
	}
	for _, v := range crash {
		// The image may hold a ":" (its tag): the duration is after the last "=".
		i := strings.LastIndex(v, "=")
		if i <= 0 {
			return f, fmt.Errorf("--crash-loop %q: want IMAGE=AFTER[:oom], e.g. registry.fly.io/hermes-agent:v2=6s", v)
		}
		img, spec := strings.TrimSpace(v[:i]), v[i+1:]
		after, mode, _ := strings.Cut(spec, ":")
		d, err := time.ParseDuration(strings.TrimSpace(after))
		if err != nil || d <= 0 || (mode != "" && mode != "oom") {
			return f, fmt.Errorf("--crash-loop %q: want IMAGE=AFTER[:oom] with a positive duration, e.g. registry.fly.io/hermes-agent:v2=6s", v)
		}
		f.crash = append(f.crash, struct {
			image string
			loop  fleetsim.CrashLoop
		}{img, fleetsim.CrashLoop{After: d, OOM: mode == "oom"}})
	}
	for _, v := range down {
		app, rest, ok := strings.Cut(v, "=")
		platform, code, _ := strings.Cut(rest, ":")
		if !ok || strings.TrimSpace(app) == "" || strings.TrimSpace(platform) == "" {
			return f, fmt.Errorf("--platform-down %q: want APP=PLATFORM[:CODE], e.g. hermes-agent-2=telegram:telegram_token_revoked", v)
		}
		f.down = append(f.down, struct{ app, platform, code string }{strings.TrimSpace(app), strings.TrimSpace(platform), strings.TrimSpace(code)})
	}
	return f, nil
}

func (f simFaults) apply(sim *fleetsim.Sim) error {
	for _, p := range f.park {
		sim.ParkPlatform(p.image, p.platform, p.code)
	}
	for _, img := range f.nous {
		sim.TerminalNous(img)
	}
	for _, c := range f.crash {
		sim.CrashLoopOn(c.image, c.loop)
	}
	for _, d := range f.down {
		if sim.MachineIDs(d.app) == nil {
			return fmt.Errorf("--platform-down: no app %q", d.app)
		}
		sim.SetPlatformState(d.app, d.platform, "fatal", d.code, false)
	}
	return nil
}

// shellQuote quotes v for a POSIX shell when it holds anything but safe
// characters.
func shellQuote(v string) string {
	if v != "" && strings.IndexFunc(v, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:@%+=,", r))
	}) < 0 {
		return v
	}
	return "'" + strings.ReplaceAll(v, "'", `'\''`) + "'"
}
