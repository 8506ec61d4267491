// Package api is migrator's HTTP API for services, above all NAS (the
// control plane customers use): a customer edits an env variable or
// switches a profile in the dashboard, NAS asks migrator to apply it to
// their agent, drained, budgeted, verified and audited like any run, and
// hears when it is done. It is mounted on serve's HTTP listener under
// /api/v1/ (internal/cli's serve decides where, as for the web view).
//
// # Routes
//
//	POST /api/v1/runs              create a run (201; 200 for a repeated Idempotency-Key)
//	GET  /api/v1/runs              runs, newest first (?app=&state=&cause=&requested_by=&before=&limit=)
//	GET  /api/v1/runs/{id}         a run with each machine's outcome and what it waits for
//	POST /api/v1/runs/{id}/cancel  cancel it
//	GET  /api/v1/openapi.yaml      the OpenAPI 3.1 document (openapi.yaml, embedded), no token needed
//
// Every answer is JSON; an error is {"error": "…", "field": "…"?}, one
// line that never holds an env value.
//
// # Tokens
//
// Each caller has a named token (Config.Tokens: serve reads
// MIGRATOR_API_TOKEN_<NAME>, at least 32 random characters, and
// MIGRATOR_API_CAUSES_<NAME>, the causes it may ask for). The run is
// recorded as requested by "api:<NAME>". A request presents it as
// "Authorization: Bearer <token>"; it is compared, as a SHA-256 digest,
// with every configured token in constant time. A wrong one is counted
// against the request's source (internal/authlimit, shared with the web
// view): past the burst the source is answered 429 with Retry-After
// until its bucket refills. No token or an unknown one is 401; a cause
// the token may not ask for is 403 (and so is cancelling such a run).
//
// # Creating a run
//
// The body is read up to Config.MaxBody (413 beyond), decoded strictly
// (an unknown field is 400) and checked by orchestrator.ValidateRequest
// before anything is read or written: every problem is 400 naming the
// field. The image, if any, is pinned to a digest as the CLI pins it
// (Config.Pin); then orchestrator.CreateRun plans and records the run in
// one transaction, env values sealed on the way (the orchestrator's
// Sealer). The body carries a customer's env values: nothing here logs a
// body, and no answer or error repeats a value (the JSON decoder's own
// messages, which may quote the input, are replaced by ours).
//
// # Idempotency
//
// An Idempotency-Key header (1 to 255 printable ASCII characters) makes
// a retried create answer 200 with the run the first one made. The key is
// scoped to the token: the run records "api:<NAME>:<key>", so two callers
// cannot collide. The request itself is recorded as a digest
// (runs.request_digest: HMAC-SHA256 under a key derived from the seal
// key, over the request in a canonical form, env values included, so a
// short value cannot be guessed from it); the same key with another
// request is 422, as the IETF draft "The Idempotency-Key HTTP Header
// Field" (draft-ietf-httpapi-idempotency-key-header) and Stripe do. Two
// creates with one key at once are serialised by the runs table's unique
// key: one creates, the other answers 200 (or 422) with its run.
//
// # Completion
//
// A run's end is an event, and reaches NAS through the notification
// webhook sink (internal/notify): a sink with requested_by ["api:NAS"]
// hears of every end of NAS's runs, run.succeeded, run.failed and
// run.cancelled, signed as Standard Webhooks say, with the run id and
// the idempotency key in its details (migration 017). NAS may poll GET
// /api/v1/runs/{id} instead.
//
// Every request runs under Config.RequestTimeout; every call it makes
// (Postgres, Fly, the registry) has its own deadline too.
package api
