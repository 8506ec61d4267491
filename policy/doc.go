// Package policy decides, for one machine about to be moved, how gently to
// drain it: (cause, machine facts, time) → Decision {quiet, rule, wait and
// deadline, force or defer at the deadline, max deferrals, maintenance
// window, policy version}. It is pure: time is an argument, and it touches
// no files, network or database (beyond the time package loading a window's
// zone). The orchestrator records every Decision before it calls the
// gateway. A *Policy is immutable and safe for concurrent use.
//
// # Model
//
// Every cause has settings; built-in defaults apply when there is no file:
//
//	cause            quiet  idle wait, then  quiet for  wait  at the deadline                      canary bake
//	auto-update      yes    30m, defer       2m         30m   defer, at most 3 times, then force   10m
//	image-migration  yes    10m, drain       0s         30m   force                                10m
//	env-edit         no     10m, drain       0s         15m   force                                5m
//	profile-change   no     10m, drain       0s         15m   force                                5m
//	operator         no     0 (at once)      0s         10m   force                                0 (none)
//
// and no maintenance window (always open).
//
// The idle wait comes before the drain: the orchestrator reads the agent's
// status and begins the drain only at a moment when no work is in flight
// (so no user is turned away), looking again with a growing back-off for up
// to idle_wait, counted from the first look. When no idle moment came,
// on_busy says what happens: "defer" puts the machine off without ever
// draining it, "drain" begins the drain anyway and waits wait as usual.
// idle_wait = "0s" begins at once. Deferrals of either kind (busy, or at the
// deadline) count toward max_deferrals; a machine that has had them all is
// decided "then force": no idle wait, drain at once, force at the deadline.
//
// idle_quiet_for is how long the agent must have shown nothing in flight
// for a moment to count as idle (and, for a drain not begun at such a
// moment, how long it waits once quiescent): Hermes's active_agents does
// not count background work (a subagent still running after its turn, a
// background process), so one look at zero may land in the middle of it.
// The auto-update's 2 minutes are Hermes's own idle timeout before it
// suspends itself.
//
// canary_bake is how long a run's canaries are watched after they verified
// (their Fly events, their gateway, every platform and the Nous session
// against what they showed before their drain) before the rest of the run
// follows; a regression rolls the canary back and pauses the run. A run's
// --canary-bake overrides it.
//
// A policy file overrides settings per cause and adds ordered rules. For a
// decision, the rules are tried in order and the first whose selectors all
// hold wins; the settings it leaves out come from its cause. Its name is the
// Decision's Rule ("default:<cause>" when none matched). When the resolved
// on_deadline is defer and the machine has had max_deferrals deferrals
// already, the decision is force and " (max deferrals reached)" is appended
// to the rule name.
//
// Policy.Version is a short sha256 of a canonical form of the effective
// policy (defaults applied), recorded with every decision: reformatting,
// comments, key order, or spelling a value differently ("1h" vs "60m") keep
// it; any change of behaviour, a rule name or the rule order changes it. A
// file that restates the defaults has the default version.
//
// # File
//
// TOML, strict: an unknown key, a value of the wrong type or out of range,
// an unknown cause, a duplicate rule name, or a rule that can never match
// because an earlier one selects everything it would, is an *Error whose
// text is one line, "FILE:LINE: message".
//
//	# Per-cause settings; every key optional.
//	[causes.auto-update]
//	quiet = true                                   # suppress the home-channel broadcast
//	wait = "45m"                                   # 1s .. 24h; Go duration syntax
//	on_deadline = "defer"                          # "force" or "defer"
//	max_deferrals = 5                              # 0 .. 100; with defer only
//	window = "Mon-Fri 02:00-05:00 America/New_York" # "always" = no window
//	idle_wait = "30m"                              # 0s .. 24h; "0s" = begin at once
//	on_busy = "defer"                              # "defer" or "drain"
//	idle_quiet_for = "2m"                          # 0s .. 1h; "0s" = one idle look is enough
//	undrainable = "fail"                           # or "recreate" (below)
//	canary_bake = "10m"                            # 0s .. 24h; "0s" = no bake
//
//	[causes.operator]
//	wait = "20m"
//
//	# Rules, tried in order; the first match wins.
//	[[rules]]
//	name = "vip"                      # required, unique: letters, digits, . _ -
//	causes = ["auto-update", "image-migration"] # selectors; each optional,
//	match = { tier = "vip" }          # all must hold: every label equal,
//	app_prefix = "acme-"              # the app name's prefix,
//	regions = ["iad", "ewr"]          # one of these regions
//	quiet = false                     # overrides; each optional
//	wait = "2h"
//	window = "Sat,Sun 22:00-04:00 UTC"
//
//	[[rules]]
//	name = "canary-fleet"
//	match = { hermes_canary = "true" }
//	wait = "5m"
//	on_deadline = "force"
//
// The customer budget lane: runs of its causes take their own small
// budget instead of the fleet cap, so a customer's change (one agent, a
// person waiting in a browser) never waits for a fleet run's slots.
// Only customer causes may take it; fleet runs never do. Its cap is
// share of the fleet's machines, rounded up, at least min (BudgetLane.Cap);
// left out of the version when it is the default:
//
//	[budget_lane]
//	causes = ["env-edit", "profile-change"]  # customer causes only; [] = no lane
//	share = "1%"
//	min = 5
//
// undrainable says what happens to an agent that cannot be drained yet (its
// drain endpoint answers 404: a Hermes without the drain route; or 401: it
// does not hold its drain secret, until its next recreate after `secret
// sync`): "fail" (the default) fails its migration and never recreates it
// blind; "recreate" recreates it without a drain, loud by necessity. It is
// left out of the version when "fail" in a cause, so older files keep theirs.
//
// A wait beyond the gateway drain marker's one-hour expiry is allowed: the
// orchestrator refreshes the marker while it waits.
//
// # Embedding
//
// The same schema may be the [policy] table of migrator.toml. The config
// loader decodes its struct with a `Policy toml.Primitive` field and hands
// the table over, keeping strictness and line numbers for both parts:
//
//	md, err := toml.Decode(string(data), &cfg)
//	pol, err := policy.ParseTable(name, data, &md, cfg.Policy, "policy")
//	undecoded := md.Undecoded() // the policy's keys count as decoded
//
// # Windows
//
// A window is "DAYS HH:MM-HH:MM ZONE": "Mon-Fri 02:00-05:00
// America/New_York", "Sat,Sun 22:00-04:00 UTC", "daily 01:00-03:00
// Europe/Berlin". An end at or before the start wraps past midnight and the
// occurrence belongs to the day it starts: "Sat,Sun 22:00-04:00" is open
// from Sunday 22:00 until Monday 04:00 but not from Friday 22:00. Times are
// the zone's wall clock; on the days it changes, see Window.Contains.
// Outside its window a Decision has InWindow false and NextWindow set; the
// orchestrator should start no drain until then. A drain begun inside may outlast the
// window (its deadline is now+wait); WindowEnd says when the window closes.
// Zones come from the system's tz database; the migrator binary embeds
// time/tzdata so a minimal container resolves them too.
package policy
