// Package notify tells on-call what needs a person: it delivers the
// notifications outbox (store, migration 011_notifications.sql) to Slack
// incoming webhooks, PagerDuty's Events API v2 and generic JSON webhooks.
//
// # Where notifications come from
//
// Not from here. Every state change migrator makes is written with an
// event row (a run paused, failed, resumed, succeeded or cancelled through
// store.SetRunState; a machine's outcome and side events through
// store.SaveStep; an auto-update tick). A trigger on the event log turns the
// rows that matter into outbox rows, one per enabled sink whose severity
// and event filter take them, in the same statement: the change and its
// notifications commit together or not at all, whatever path made the
// change. Which sinks exist is written at serve's start-up (Register): the
// database knows their names, kinds and filters, never their secrets. With
// no sink configured nothing is written.
//
// # Delivery
//
// Delivery is at least once and never holds a run up. A periodic River
// job (every Config.SweepEvery, on whichever replica River's leader hands
// it to) inserts one delivery job per due notification of this replica's
// sinks, unique per notification while it is live, in a River queue of
// its own. The job sends the message with the notification's idempotency
// key (a UUID written with the row: the same on every retry, on every
// replica) through go-retryablehttp, retrying 429, 5xx and network errors
// a few times at once (after Retry-After when it is short), then records
// the answer: delivered; failed when the receiver refuses it for good (any
// other 4xx, a redirect) or when it stayed undeliverable past
// Config.GiveUpAfter; else pending, due again after a back-off (RetryMin
// doubling to RetryMax, never before the receiver's Retry-After). A
// replica killed mid-delivery leaves the row pending and its job to
// River's rescuer: the message may then arrive twice, with the same key.
// A receiver down for an hour loses nothing; `migrator notify list` shows
// every row's state, attempts and last answer.
//
// # Order
//
// The notifications of one incident reach a sink in the order they were
// written, one at a time: a notification is due only while no earlier one
// of its (sink, incident) is pending, and its job checks that again before
// it sends (store.ClaimNotification), in SQL, so it holds across replicas.
// A resolve therefore never overtakes its trigger (a pause and a resume
// within one sweep; a trigger retried after a 429), which PagerDuty would
// drop, opening the late trigger for good. A close whose open never went
// out (failed, or dropped) is dropped too: there is nothing to close.
//
// # Upkeep
//
// A second periodic job (every Config.HousekeepEvery) announces agents
// whose left drain has expired (the gateway drops a drain marker after an
// hour: store.LeftDrainingWindow) as serving again, and deletes the
// notifications older than Config.Retention (30 days) that are done with,
// in batches; an incident still open keeps its last open.
//
// # Messages
//
// One line (Summary) says what happened and why; Slack gets it with the
// run, cause, image, counts and a link to the web view's run page
// (Config.WebURL); PagerDuty gets a trigger for an incident that opens (a
// run paused or failed, an agent left draining or not serving, an
// auto-update that cannot create its run) and a resolve, with the same
// dedup_key, when it closes (the run resumed, succeeded or was cancelled;
// the auto-update works again; a failed run's machines brought up by a
// later run that succeeded; the agent found serving by a later migration
// of its machine, or its drain marker expired; `migrator notify resolve`),
// and nothing else: notes (a rollback, a lease release that failed, a run
// that succeeded with deferrals) open and close nothing, so they go to
// chat sinks and webhooks only (the outbox trigger does not write them
// for a PagerDuty sink). The webhook gets WebhookBody, signed as Standard
// Webhooks says (webhook.go: webhook-id, webhook-timestamp,
// webhook-signature; a previous secret signs too while keys rotate).
// Secrets (webhook URLs, routing keys, signing secrets) are never logged,
// stored or put in an error: answers and errors are redacted before they
// are recorded.
package notify
