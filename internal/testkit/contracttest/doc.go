// Package contracttest holds migrator's contract tests: both adapters, the
// Fly Machines client (internal/flymachines, over fly-go's flaps) and the
// Hermes drain client (internal/gateway), run against the fleet simulator
// (internal/testkit/fleetsim) over real loopback HTTP, one table row per pitfall of
// shared/contracts/fly-machines.md and shared/contracts/hermes-gateway.md.
//
// It has no code of its own; the tests prove that what the adapters send
// and how they read the answers match what the simulator (built from the
// same contract pages and fly-go's own source) serves, so the orchestrator
// built on them can trust, among others:
//
//   - a held lease is a *flymachines.LeaseHeldError naming owner and expiry,
//     in one request, not fly-go's minute-long spin;
//   - a 429 is re-sent after its Retry-After, and a burst is paced by the
//     client so the simulator counts no rate violation;
//   - a boot longer than one 60-s /wait is still awaited, a silent revert by
//     flyd is a *flymachines.RevertedError, and the health gate refuses
//     stale, missing or failing check results;
//   - an update carries the full fresh config under the lease nonce, is
//     never applied twice when its answer is lost, and does not launch a
//     stopped machine;
//   - every drain POST is a JSON object whose suppress_notification is a
//     JSON boolean, and the simulator's recorded home-channel broadcast at
//     the recreate follows it;
//   - 401 is permanent, an unreachable dashboard is a retried transport
//     error bounded by the context, a dead gateway reads as quiescent, and
//     quiescence needs the watcher's "draining" and no turns in flight;
//   - the readiness probe (a drain POST with an unknown action) reads 400 as
//     ready, 401 as no secret and 404 as no drain route, and begins or
//     cancels nothing; on a gated bind the 401's body names the layer that
//     refused (the drain route, or the login gate before routing), and an
//     older Hermes answers 401 with an older version;
//   - /api/status has hermes-agent's shape: gateway_platforms an object per
//     platform (a platform parked at boot is "fatal" with its error_code
//     and the gateway "degraded"; one down before stays down), overall, and
//     nous_session_valid ("terminal" while everything else looks healthy);
//   - Hermes by feature (hermes_contract_test.go, each row naming its
//     hermes-agent source): below 0.18.0 the quiet flag is not echoed and the
//     shutdown broadcasts, and a drained stop leaves the next boot dark;
//     below 0.19.0 cron runs are not in active_agents and keep starting
//     while draining; background delegations and processes never are, and
//     a recreate cuts them off; active_sessions counts sessions active in
//     the last 300 s; a disabled platform is not parked; a dashboard bound
//     to another hostname answers 400 "Invalid Host header" (after the
//     bearer check), which the probe does not take for a drain route;
//   - GET machine's events come newest first: an update's SIGTERM is an exit
//     with requested_stop; a crash loop's exits are not requested, carry
//     restarting and a growing restart_count, each followed by flyd's start
//     of the same instance, until the restart policy gives up; an OOM kill
//     is oom_killed;
//   - an app secret set through fly-go's flaps answers its digest and the
//     app's secrets version, reaches a machine only at an update carrying
//     min_secrets_version, and never appears in an error;
//   - the Fly token, the drain key and the derived drain secrets appear in
//     no log line, error or audit record;
//   - a real fleet (fleet_contract_test.go, each row naming its source in
//     fly-go, flyctl or Fly's docs): every machine state is listed as Fly
//     names it; a resume keeps the process (and a drain marker), a stop
//     discards it; autostop suspends an idle machine and a user turn
//     through the proxy starts it again; a host that is not ok shows only
//     an incomplete config and takes no call; release-command and console
//     machines sit in the listing and fly-go's ListActive drops them; a
//     held lease's 409 is read in both texts Fly has used (code
//     "invalid"), with FindLease as the fallback; a deployer's 13-s leases
//     refresh until it is done; a tag moves while a machine keeps its
//     digest, and FullImageRef brings that digest back; a multi-container
//     machine is never half updated; a machine decided down that a user
//     woke is not updated with skip_launch;
//   - a proof that holds on a real fleet (proof_contract_test.go, issue
//     26): autostop's stop passes through "stopping" and leaves an exit
//     event with requested_stop; Hermes's scale-to-zero marks itself
//     draining without a marker and suspends its machine (no SIGTERM), a
//     resume keeps it dormant until a message; Fly's transient states
//     (restarting, stopping, suspending) keep the dashboard away and an
//     update busy; a suspend is refused past Fly's requirements (over
//     2 GB, …) and Machine.SuspendBlocked says why; an update carries the
//     Fly release in config.metadata; releases go through Fly's GraphQL
//     API with fly-go's own operations, `fly releases` (fly-go's query)
//     lists them, and a token without the scope is
//     *ReleasesUnauthorizedError.
//
// Time: each row runs its own simulator on a clock.Scaled at 100× with
// fleetsim.Config.APISimTime, and gives the Fly client the same clock, so
// rate limits, Retry-After, lease TTLs and /wait timeouts are simulated
// seconds on both sides and a 150-s boot takes 1.5 s. The one exception is
// the burst row, which runs on the real clock so that the simulator's
// per-wall-second counter (PeakPerSecond) reads in Fly's own units.
package contracttest
