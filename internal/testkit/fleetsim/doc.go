// Package fleetsim is a simulated Hermes fleet on Fly.io: the subset of the
// Fly Machines API that fly-go v0.9.3's flaps client calls, and one Hermes
// dashboard per machine, on one loopback HTTP server. Contract tests, the
// orchestrator's tests, the fleet benchmark and the sandbox point migrator
// at it through the same environment variables as at production (Sim.Env):
//
//	FLY_API_TOKEN         the token the API accepts (Bearer or FlyV1)
//	FLY_FLAPS_BASE_URL    Sim.URL(); flaps reads it when the client is built
//	FLY_API_BASE_URL      Sim.URL(): Fly's GraphQL API (releases) at /graphql
//	MIGRATOR_GATEWAY_URL  Sim.URL()+"/gateway/{app}/{machine_id}"
//	MIGRATOR_DRAIN_KEY    the key every agent's secret is derived from
//	MIGRATOR_FLY_ORG      the org slug ListApps answers for
//
// # Fleet
//
// Apps are named AppPrefix+"1" … AppPrefix+"N" (default hermes-agent-1…),
// each with MachinesPerApp machines (14-hex ids, regions round-robin, a
// volume mounted at /opt/data, an HTTP check "dashboard" on /api/status,
// config.metadata = Fly's fly_* keys plus Config.Labels), on Config.Image
// (or Config.AppImage's per app). Every agent's drain secret is
// drainsecret.Derive(DrainKey, app), set as its app secret unless the app
// is Config.Unprovisioned. Config.DayOne shapes a fleet before enrolment
// (legacy apps on LegacyImage, unprovisioned apps). All names and ids are
// reproducible from Config.Seed.
//
// # Time
//
// Config.Clock is the simulated timeline (tests use clock.NewScaled, e.g.
// 100: one simulated second lasts 10 ms; or clock.NewManual). Boot, check,
// gateway start-up and watcher delays, marker and lease expiry, and turns
// are simulated time. Rate limits and the /wait timeout are wall time by
// default, as a client must respect them against the real API;
// Config.RateLimitsSimTime and Config.WaitSimTime (both: APISimTime) make
// them simulated time instead, for a client that paces itself on the same
// scaled clock (and so that "wait loops past 60 s" takes 0.6 s at 100×).
// The lease TTL is simulated time (expires_at is a Unix time on the
// simulated timeline), so a client under a fast clock with wall-time limits
// must keep its lease refreshes under 1/s of wall time.
//
// Nothing runs per machine: state that changes with time alone (a boot
// completing, a gateway leaving "starting", a marker expiring, turns
// starting and ending) is computed from timestamps when a machine is next
// read or written, and every write first brings the machine up to now, so
// the past is evaluated under the parameters that held then. /wait callers
// sleep on a timer to the next transition or a per-machine signal. The
// disruption count is kept exact with one heap of "may recover at" times.
// 10,000 machines take about 23 MiB of heap.
//
// # Machines API (paths and shapes as fly-go v0.9.3 expects)
//
//	GET    /v1/apps?org_slug=O               {"total_apps":N,"apps":[flaps.App…]}
//	GET    /v1/apps/{app}                    flaps.App
//	GET    /v1/apps/{app}/machines           [fly.Machine…] (region=, state=, metadata.K=V, summary=true)
//	GET    /v1/apps/{app}/machines/{id}      fly.Machine
//	POST   /v1/apps/{app}/machines/{id}      update with fly.LaunchMachineInput → 200 fly.Machine
//	GET    …/{id}/wait?instance_id=|version=&state=&timeout=   200 {"ok":true} | 408
//	POST   …/{id}/lease?ttl=N                201 acquire, 200 refresh (nonce header) | 409 | 404
//	GET    …/{id}/lease                      200 lease (nonce, owner, description) | 404
//	DELETE …/{id}/lease                      200 | 404 "lease not found" | 409 wrong nonce
//	POST   …/{id}/start, …/{id}/stop, …/{id}/suspend   200 | 412 while replacing | 400 suspend refused
//	POST   …/{id}/restart                    200: the same instance, a new boot | 412 unless started
//	POST   /graphql                          Fly's GraphQL API: createRelease, updateRelease, app { releasesUnprocessed, currentReleaseUnprocessed }
//	GET    /v1/apps/{app}/secrets            {"secrets":[{name,digest,created_at,updated_at}…]} (never values)
//	POST   /v1/apps/{app}/secrets/{name}     {"value":…} → 201 {name,digest,…,"version":N}
//	POST   /v1/apps/{app}/secrets            {"values":{name: value|null}} → {"secrets":[…],"version":N}
//	DELETE /v1/apps/{app}/secrets/{name}     {"version":N} | 404
//
// An update stores config.env as sent and the new instance boots with it
// (MachineView.Env); RejectEnv(key, value, platform) parks that platform
// on a gateway booted with that value (a bot token Telegram refuses). A
// restart (POST …/restart) keeps the instance id, config and secrets, and
// boots a new epoch; an update always makes a new instance id, even of an
// unchanged config (change.go, with its sources).
//
// App secrets have one version per app, bumped by every write. A machine
// sees the secrets only of the version it was last recreated with: an
// update that carries min_secrets_version N (N at most the app's version,
// else 412) gives the new instance the app's current secrets; one without
// it keeps the secrets the machine had. Every app starts with its derived
// HERMES_DASHBOARD_DRAIN_SECRET at version 1, except Config.Unprovisioned
// apps, which have no secret (version 0) and whose agents answer 401 until
// recreated with it. The digest is an opaque fingerprint of the value.
//
// Every response carries Fly-Request-Id. A missing or wrong Authorization
// is 401 {"error":"unauthorized"}; errors are {"error":"…"}, lease conflicts
// {"status":"error","message":"machine ID X lease currently held by OWNER,
// expires at RFC3339"} (also for a mutation without the lease's nonce
// header, fly-machine-lease-nonce). A refresh with the nonce of an expired
// lease is 404 "lease not found": the lease is gone, acquire again. A lease
// keeps the description its POST body gave; GET …/lease shows it with the
// nonce, as Fly does to any holder of the token (flyctl's `machine leases
// clear` reads the nonce and releases).
//
// An update of a started machine is a SIGTERM of the running instance
// (recorded as a Shutdown), then "replacing" for BootTime with a new
// instance_id (in the update's response already), then "started". An update
// while replacing is 409 "concurrent update in progress". region and name
// cannot change (400). skip_launch leaves the machine stopped with the new
// config. The config is stored as sent: drop the mounts and the volume is
// detached (MachineView.VolumeAttached), drop the checks and the check list
// is empty. Check results: while the VM is not running the previous
// instance's results stay on show with their old updated_at; after a boot
// every check is critical (updated_at = boot) until CheckDelay, then passing
// (updated_at = boot + CheckDelay). FailImagePull(image): the boot ends on
// the last good config and instance id, started, with no trace but the
// state (the new instance id is "failed" for /wait); the boot is a new epoch,
// so the old marker reads absent. FailImagePrepare(image): flyd cannot
// prepare the image, so the running instance is never touched: the update
// is answered (200, a new instance id, state "replacing") but that instance
// is "failed" for /wait at once, and the machine stays started on its old
// instance and config, with no SIGTERM and the same epoch, so a drain
// marker on it stays current and the agent keeps refusing turns until the
// drain is cancelled. NeverHealthy(image): checks stay critical and the
// gateway ends "startup_failed". CrashOnStart(image): the new instance exits
// as it starts (its restarts spent): the machine rests "stopped" on it, with
// an exit event. SlowStart(image, d): a gateway booted on image reports
// "starting" for d instead of GatewayStartup, then runs.
//
// /wait answers once the machine, or the instance named by instance_id
// (alias version; a replaced instance counts as "stopped"), is in one of
// the states (default started), else 408 after timeout seconds (default and
// cap 60); an unknown instance id is 400.
//
// Rate limits (DefaultLimits, token buckets keyed per machine and action,
// per app for lists, per org for the app list): over the limit is 429 with
// Retry-After in whole seconds, counted by RateViolations. Injected 429s
// (SetFaults) carry Retry-After too but are not violations. SetFaults can
// also delay a route before it is handled (Latency) or hold its answer back
// after it took effect (Hold: a lease granted whose answer a client killed
// meanwhile never reads).
//
// # Dashboards
//
// A machine on one of Config.LegacyImages runs an older Hermes without the
// drain route: POST /api/gateway/drain is 404 (before auth) on a loopback
// bind. Config.GatedBind serves every dashboard as on a non-loopback bind
// (how a control plane reaches an agent): the login gate answers before
// routing, so the older Hermes answers the drain path 401 {"error":
// "unauthenticated", "reason": "no_cookie", "login_url": …}; an agent with
// no drain secret (no token route registered) 401 {"error":
// "session_expired", "reason": "invalid_or_expired_session", …}; a drain
// secret other than the bearer 401 {"error": "unauthenticated", "detail":
// "Unauthorized"} from the route itself (also on a loopback bind); and
// /api/status leaves out gateway_pid and hermes_home.
//
// /api/status has hermes-agent's shape: gateway_platforms is an object per
// configured platform (Config.Platforms, default a seeded subset of
// telegram, discord, slack): {state, error_code, error_message,
// needs_attention, retrying_since, updated_at}, empty while the gateway
// starts or is down; overall and components roll them up;
// nous_session_valid is "valid"; gateway_exit_reason says why a crashed or
// startup_failed gateway exited. ParkPlatform(image, platform, code): on
// image that platform is "fatal" with the code and the gateway "degraded"
// (serving the others). SetPlatformState(app, platform, state, code,
// attention): that platform reports state on every image (down before a
// migration, down after it). TerminalNous(image): nous_session_valid
// "terminal" while everything else looks healthy.
//
// /gateway/{app}/{machine_id}/api/gateway/drain and …/api/status behave as
// shared/contracts/hermes-gateway.md says: 405 for another method (before
// auth), 401 {"detail":…} unless Authorization is "Bearer <the secret the
// instance booted with>" (none: always 401; SetWrongSecret: the agent holds
// another secret, so always 401); a body
// that is not JSON is {} and begins a drain; a JSON value that is not an
// object (an array) is a plain-text 500, and so is a non-string action;
// action is trimmed and lower-cased, falsy → "drain", unknown → 400
// {"detail":"Unknown drain action …"}; suppress_notification goes through
// Python's bool() (the string "false" is true). Responses:
//
//	{"ok":true,"action":"drain","requested_at":"…+00:00","draining":true,"suppress_notification":b}
//	{"ok":true,"action":"cancel","was_draining":b}   (b: the marker file existed, even stale)
//
// While the VM is not running (replacing, stopped) or the machine is
// unknown, the dashboard closes the connection without an answer, as a
// refused connection would look to a client: a transport error, never a
// status. SetDashboardDown does the same for a running machine.
// SetGatewayDown instead kills the gateway process: the dashboard answers,
// gateway_running false, gateway_state "stopped", turns are missed and work
// in flight is lost (no ping); clearing it restarts the gateway with the
// same epoch (it passes through "starting" and honours a current marker).
//
// The marker has requested_at, epoch and the quiet flag. Begin writes it
// (a refresh of a current marker keeps when the watcher saw it and updates
// age and flag: last writer wins); the watcher notices a new marker after
// WatcherDelay, and only then does gateway_state read "draining" and new
// turns get refused (turns that start before still run). A marker older
// than MarkerTTL is ignored (the agent serves again). A VM boot changes the
// epoch, so the old marker, still on the volume, reads absent: the new
// gateway is "starting" for GatewayStartup, then "running". While draining,
// gateway_busy and gateway_drainable are false; active_agents is turns in
// flight (and cron runs from Hermes 0.19.0); active_sessions the sessions
// active in the last 300 s; restart_drain_timeout is 0; version is
// Config.HermesVersions' for the image, else its tag. Older Hermes feature
// sets, work active_agents does not count, disabled platforms and a
// dashboard refusing the Host header: hermes.go.
//
// Config.Hostile makes the first apps' agents hostile, as a tenant who
// controls the machine can (hostile.go, with the hermes-agent source that
// puts tenant-chosen names into /api/status): a 1 MiB X-Request-Id on
// every other answer, 1,000 platforms whose names and errors carry Slack
// mentions, terminal escapes and spreadsheet formulas, and HostilePlatform,
// which fails ("fatal") on any image but Config.Image.
//
// # Agents and shutdowns
//
// Each machine has turns (Workload: a seeded alternating renewal process,
// busy with log-normal turns a BusyFraction of the time; or the activity
// model; or a script from Workload.Turns; plus AddTurn). A turn starting
// while the gateway runs is served and in flight until it ends; while
// draining it is refused (counted per agent, and recorded with its time:
// Refusals); while the gateway is not serving it is missed.
//
// The activity model (Workload.Activity, DefaultActivity) is agents whose
// users keep talking: per agent, turns arrive as a Poisson process at the
// agent's own rate, drawn log-normal across the fleet (median 2 turns an
// hour, σ 1.5, capped at 120/h: most agents quiet, a few chatty); turn
// lengths are log-normal (median 20 s, σ 1.2); turns overlap, and
// active_agents counts those in flight. A share of the agents (2 %) is in
// a multi-hour task (median 2 h) at the start. The fleet starts in the
// steady state: the process is run from before the start (as far back as
// turns last) and the turns still in flight at the start are kept. Like
// the busy-fraction generator it is lazy, one turn ahead per machine, and
// reproducible from Seed and the machine's name.
//
// Workload.AtDrain (DrainTurns) is the fleet benchmark's drain model, not
// an agent's behaviour: a turn of a drawn length starts on a machine as a
// drain is begun on it, so each drain waits its own length whatever the
// schedule (a benchmark in another process draws the same lengths).
// IdleMoment replays an agent's workload from the start to the first
// moment after a given one at which it has nothing in flight and nothing
// arrives for a window: the earliest a drain could end without refusing a
// turn (the activity benchmark's LB_idle).
//
// Every request for a machine (a Machines API call on it, its dashboard)
// is counted on it with its time; MachineView.LongestQuiet is the longest
// pause between two, the benchmark's "longest a machine stood still".
// Each Refusal names the drain that refused it (begun, noticed).
//
// Drain time: each agent accrues the time its gateway_state was "draining"
// (from the watcher noticing the marker to a cancel, the marker's expiry,
// the SIGTERM of a recreate, or the gateway dying), exactly, at its next
// look (MachineView.DrainingTime; Activity sums it over the fleet with the
// turn counts).
//
// At a SIGTERM (update or stop of a running VM) the simulator records a
// Shutdown: ActiveAgents turns in
// flight (all interrupted), SessionsPinged distinct sessions among them
// (never suppressed), and HomeBroadcast unless a current (same epoch,
// unexpired) marker has suppress_notification true; the turns are counted
// as interrupted on the machine. A dead gateway sends nothing.
//
// Disrupted counts machines with a current marker, booting or stopped, or
// whose gateway is not "running"; MaxDisrupted is its peak, exact at every
// instant.
//
// # A real fleet (realfleet.go, with its sources)
//
// Config.Shape makes an app's machines what a real fleet holds
// (MachineShape): any of Fly's machine states at the start (stopped,
// suspended, created, failed, destroyed; starting, replacing, updating,
// stopping, suspending, destroying on their way), release-command and
// console machines in the listing beside the agent (fly_process_group;
// fly-go's ListActive drops them), a host whose host_status is not ok (GET
// shows only incomplete_config, every call on the machine is 503, the
// dashboard does not answer; SetHostStatus), multi-container machines
// (config.containers, "app" running the agent, config.image empty: an
// update of config.image alone leaves the agent on its image), and Fly
// Proxy's autostop: idle for AutostopAfter (no request: a turn starting,
// refused or served), the machine is stopped (a SIGTERM, Shutdown cause
// "autostop") or suspended (frozen, no SIGTERM); a user turn for a machine
// with autostop that is down starts it (resume in ResumeTime keeps the
// process and epoch; a cold start boots a new epoch) and is served once it
// is up. The proxy is assumed to start and stop machines whatever lease is
// held (no source says either way; it is the harder case for a deployer).
// POST …/suspend freezes a running machine; a stop discards the snapshot.
// Down at rest (autostop, down from the start, or left down by an update
// that did not launch it) is not counted as disrupted. Config.RealFleet
// shapes apps 1…9 as one of each kind (RealFleetKinds).
//
// What runs is image_ref: an update resolves config.image (the agent's
// image) in the registry at that moment and the machine keeps that digest;
// MoveTag points a tag at another digest, as a push does, so the next
// update naming the tag pulls the new build while "repo:tag@digest"
// (fly-go's FullImageRef) pulls exactly the digest. Image faults
// (FailImagePull, NeverHealthy, ParkPlatform, TerminalNous, …) match the
// image string or the digest; one set on a tag is also set on the digest
// the tag resolves to then, so a run pinned to that digest meets it (a
// tag moved later leaves the fault on the build it named).
// The same registry answers the OCI distribution API's manifest HEAD
// under /v2/ (registry.go), with user "x" and the Fly token as Fly's
// registry takes them, so `run create` pins a run's image here
// (MIGRATOR_FLY_REGISTRY_URL) to the digest an update would pull.
//
// Lease conflicts state the expiry in RFC 3339 (Config.LeaseConflictFormat
// LeaseTimeRFC3339, default) or, as Fly's API reference shows it, in Go's
// time format with "code":"invalid" (LeaseTimeGo). HoldLeaseWhile is a
// deployer holding the lease the way flyctl's deploy does (13-s leases
// refreshed every 4 s) until it is done, then updating the machine to its
// image (a new instance id) and releasing.
//
// # Transient states, sleep and releases (transient.go, scaletozero.go, releases.go)
//
// A stop through the API or autostop is "stopping" for StopTime (the
// SIGTERM at its start, the exit event requested_stop), then stopped; a
// suspend "suspending" for SuspendTime (no SIGTERM), then suspended; an
// update or a start meanwhile is busy. Fly refuses a suspend of a machine
// over 2 GB, with swap, a schedule or a GPU (400 here). SetTransient holds
// a machine in any transient state Fly names (restarting, creating, …) for
// a test's duration; shapes may start in them.
//
// MachineShape.SelfSuspend is Hermes's scale-to-zero: the agent's watcher
// (first look 60 s after start, then every 30 s) finds it idle for
// ScaleToZeroIdle (default 2m) with nothing in flight, marks the gateway
// "draining" without a marker (turns are not refused), and a second later
// suspends its machine through the local flaps socket; a user turn
// through the proxy wakes it (autostart). A resume is the same process,
// still "draining" until an inbound turn; an update is a new process.
//
// Every app starts with one Fly release (v1, complete, its first image).
// POST /graphql serves fly-go's CreateRelease, UpdateRelease and the
// queries `fly releases` and LatestImage send; SetGraphQLUnauthorized
// answers every request as for a token without the scope. Sim.Env sets
// FLY_API_BASE_URL to the simulator.
//
// # Control from another process
//
// Behind the Fly token: GET /_sim/state (State: machines, shutdowns,
// request counts, activity totals and refusals), POST /_sim/faults (route
// name → FaultSpec) and POST /_sim/control (ControlOp), so tests driving a
// standalone `migrator fleetsim` can observe and inject faults.
//
// # Files
//
//	sim.go          the Sim, New (the fleet built from the seed), lookups and accessors
//	machine.go      a machine's state: VM state, agent phase, lease, marker; API state and checks
//	lifecycle.go    the lazy model: boots, the phase at an instant, turns, mutations, the SIGTERM
//	disruption.go   the disruption count and its peak (the relief heap)
//	view.go         what tests read: Shutdowns, MachineView
//	inject.go       what tests do: AddTurn, HoldLease, SetGatewayDown, … and the image faults
//	agent.go        /api/status's platforms, Nous session, crash loops (hermes-agent's signals)
//	realfleet.go    a real fleet's machines: states, groups, host status, containers, autostop
//	transient.go    stopping, suspending and the other transient states; suspend's requirements
//	scaletozero.go  Hermes suspending itself when idle
//	releases.go     Fly releases through the GraphQL API
//	workload.go, activity.go, drainturns.go   the turns: generator, activity model, drain model
//	config.go, scenario.go   Config and its defaults; the TOML scenario of `migrator fleetsim`
//	server.go       the HTTP server, auth, rate limits and injected faults (SetFaults)
//	flyapi.go, secrets.go, registry.go   the Machines API, app secrets, the image registry
//	change.go       config.env and the agent that rejects a value (RejectEnv), the restart endpoint
//	dashboard.go    the Hermes dashboard: drain and status
//	hermes.go       older Hermes feature sets (Config.HermesVersions), cron and background work
//	                active_agents does not count, active_sessions, disabled platforms, a
//	                dashboard refusing the Host (each with its hermes-agent source)
//	control.go      /_sim/state, /_sim/faults, /_sim/control for another process
package fleetsim
