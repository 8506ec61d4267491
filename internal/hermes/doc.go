// Package hermes knows which Hermes (hermes-agent) releases carry the
// behaviours migrator relies on, feature by feature: one minimum version
// per feature, not one version for "drainable". The version is what an
// agent's GET /api/status reports as "version": hermes-agent's
// hermes_cli.__version__, bumped only by its release commits
// ("chore: release vX.Y.Z (CalVer)"), and Hermes Cloud and Docker images
// are built from those tags (the v0.18.1 release PR, #60595: "patch tag so
// Hermes Cloud / Docker images can build from the latest tagged release").
//
// # The table
//
// Each feature's minimum is the first release whose release commit came
// after the feature's pull request merged (the PR dates and the release
// PRs are hermes-agent's, read in its pull requests):
//
//	feature            PR (merged)                 first release
//	drain_route        #52937 (2026-06-26)         0.18.0 (v2026.7.1, #56611, 2026-07-01)
//	quiet_flag         #54824 (2026-06-29)         0.18.0
//	boot_self_heal     #55397 (2026-06-30)         0.18.0
//	counts_cron        #63891 (2026-07-13)         0.19.0 (v2026.7.20, #68175; 0.18.2 was cut 2026-07-08)
//	self_suspend       #84295, #84327 (2026-08-12) 0.20.1 (v2026.8.13, #85542)
//	marker_expiry      #85444 (2026-08-13)         0.20.2 (v2026.8.16, #87851): 0.20.1 was cut the
//	                                               same day and its order against #85444 is not known
//	idle_2m            #91155, #90761 (2026-08-20) 0.20.6 (v2026.8.27, #96331; 0.20.5 is v2026.8.19)
//
// An image built between two tags reports the older tag's version, so a
// version below a minimum means "may lack", and migrator takes the safe
// side: it never assumes a feature a version does not promise. A version
// that cannot be compared (a dev build, "unknown", absent) is Unknown, and
// each rule says what it does then.
//
// Table values can be overridden (MIGRATOR_HERMES_FEATURES in the CLI), for
// a fleet on a fork or on images built from hermes-agent's main branch.
//
// # What Hermes does not count
//
// active_agents never counts background delegations (a subagent still
// running after the turn that started it ended) or background terminal
// processes: Hermes checks those only before it suspends itself
// (gateway/run.py _scale_to_zero_has_live_background_work: the runner's
// tracked tasks, tools.async_delegation.active_count, the process
// registry). The public /api/status has no field for them; the nearest is
// active_sessions, the sessions whose last activity is under
// ActiveSessionWindow old (hermes_cli status route,
// _count_status_active_sessions: ended_at null and now - last_active <
// 300 s over the 50 most recent sessions; _status_active_sessions answers
// 0 when that read takes over 0.75 s or fails, so 0 may also be a slow
// database).
package hermes
