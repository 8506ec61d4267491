// Package webview is migrator's read-only web view for on-call: the runs
// list, a run page with progress, ETA, budget in use over time, outcome
// counts and a live timeline of every machine, a machine migration's audit
// events, an agent's migrations (drain_history) and the history search with
// CSV download. serve mounts it beside /metrics.
//
// Everything is GET; nothing changes a run (pause and cancel stay in the CLI,
// which records who did it). Pages are html/template, so everything that
// comes from Fly or an agent (app names, errors, event details) is escaped;
// the JavaScript (embedded, no build step) writes data with textContent and
// canvas text only, and a Content-Security-Policy allows scripts from this
// origin only. Lists, the history search and the audit pages work without
// JavaScript; the timeline needs it.
//
// The run page is live while the run is in flight: it polls
// /runs/{id}/timeline.json?after=N every Config.PollInterval (2 s), which
// costs three indexed statements (the run row; its transition events after
// N; the machines that changed and those holding a budget slot), so one
// open page costs 1.5 statements a second at any run size. The first load
// reads every machine and every transition of the run once (three
// statements; about 0.1 s at 10,000 machines, BenchmarkRunPage10k). Timeline phases are derived generically from the
// transition events "machine.<state>" / "machine.<outcome>" (detail.from
// names the state left; see store.Transition), so a new state gets its own
// bar without a change here; the page colours the states it knows and
// gives any other a neutral colour with its name.
//
// At thousands of machines the timeline draws only the rows in view on a
// canvas (virtualised), and the budget chart aggregates the run by phase.
//
// Access: the view holds every customer's app names, machine ids, drain
// outcomes and the operators' reasons, so it is never open by omission:
// Config.BearerToken and/or Config.BasicUser/BasicPassword require
// credentials, or Config.Open says, explicitly, that whoever reaches the
// address may read it (serve does so only on a loopback address or with
// MIGRATOR_WEB_OPEN=true). Credentials are compared as SHA-256 digests in
// constant time; a wrong one is logged (source address, method, path,
// scheme; never what was presented) and counted against its source, which
// after Config.AuthBurst wrong attempts is answered 429 with Retry-After
// until its bucket refills (auth.go). No page shows a secret: the view
// reads runs, machines, drains and events, which hold none.
package webview
