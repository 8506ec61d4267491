// Package flymachines is migrator's adapter to the Fly Machines API, over
// fly-go v0.9.3's flaps client. It exposes only what the orchestrator needs:
// list apps of an org and machines of an app, read a machine, take / refresh /
// release its lease, update it to an image, wait for the new instance, and
// gate on its health checks.
//
// # Endpoint and token
//
// The token (FLY_API_TOKEN, read in cmd/) goes to fly-go's tokens.Parse:
// fm1r_/fm1a_/fm2_ tokens are sent as "Authorization: FlyV1 …", others as
// "Bearer …". It never appears in logs or errors (server text in errors is
// shortened and scrubbed of it). fly-go reads FLY_FLAPS_BASE_URL itself when
// the client is made; Config.BaseURL instead rewrites every request's scheme
// and host in this package's transport, which is how tests and the fleet
// simulator on 127.0.0.1 are reached. fly-go's Logger is never set: it logs
// whole bodies, machine env included.
//
// # Transport
//
// fly-go's own layers (otel, and rehttp retrying 502/503 and network errors
// 3 times) sit above this package's transport, so it sees every attempt:
//
//   - 429 answers are re-sent after Retry-After (seconds or HTTP date), at
//     most Max429Retries times and never past the context's deadline
//     (fly-go neither retries 429 nor keeps the header);
//   - token buckets per (machine, action) keep to Fly's published limits
//     (1 req/s burst 3 per action per machine; Get Machine 5/s burst 10;
//     lists per app or org), waiting rather than exceeding them;
//   - callrec records each attempt for the audit log, named by the
//     operation ("fly.get", "fly.update", …) and "app/machine_id".
//
// Every call has a deadline (Config.CallTimeout; a /wait call its wait on
// top), because fly-go's http.Client has none.
//
// # Mutations are sent once
//
// Lease and update requests are built with flaps.Client.NewRequest and sent
// without fly-go's retries: flaps.AcquireLease spins for about a minute on a
// held lease (its 409 check is dead code), and rehttp would re-send an
// update whose first attempt may have landed. A 409 on a lease is a
// *LeaseHeldError at once, with the holder and expiry read from Fly's text
// in either form it has used (RFC 3339; Go's time form with "code", as
// Fly's API reference shows it); FindLease gives the expiry as a number. An update whose outcome is unknown (408, 5xx, no
// response) is followed by a fresh read: if the machine already names the
// image, the update is not sent again.
//
// # Update, wait, verify, health
//
// UpdateImage sends the machine's full, freshly read config with only the
// image changed (mounts, env, services kept). Whether Fly launches the new
// instance is the caller's one decision, WithLaunch (made from the machine
// as read under the lease, and used again for the rollback); without it,
// flyctl's rule on the fresh read (started, starting and failed machines
// launch). IfStillDown refuses, unsent, to update a machine decided down
// that runs now (*StateChangedError). A multi-container machine is refused
// unsent (*ContainersError) unless WithContainer names the container to
// move: changing config.image alone would leave its containers as they
// were. A machine whose host is not ok (only incomplete_config readable)
// is *HostUnavailableError, unsent. Machine carries image_ref (what runs:
// ImageRef, with Full() = fly-go's FullImageRef), host_status, the
// containers, and fly-go's release-command and console tests. WaitForInstance loops over /wait calls of at
// most 60 s (Fly answers 408 when the state was not reached) and reads the
// machine between them, because flyd silently reverts a failed update and
// starts the old version again: that is a *RevertedError, as is any final
// read whose instance id or image differ. CheckHealth refuses the vacuous
// pass of zero results and results older than the update.
//
// # App secrets
//
// ListAppSecrets and SetAppSecret go through fly-go's flaps client (GET and
// POST /v1/apps/{app}/secrets…): names and Fly's digests come back, never
// values; a write answers the app's new secrets version. A value being set
// is scrubbed from any error, as the token is. UpdateImage takes
// WithMinSecretsVersion, sent as min_secrets_version: a machine sees app
// secrets only when recreated, and this makes its new instance hold at least
// that version.
//
// # Errors
//
// Failures are *APIError (Op, App, MachineID, Status, RequestID, Msg) or one
// of the typed errors above; classify with IsTransient (408, 429, 5xx,
// network, timeouts) and IsNotFound, never by message text.
//
// # Time
//
// Config.Clock is the timeline of Retry-After, lease TTLs, /wait timeouts
// and the rate limits: with a scaled clock (the simulator's) the client
// paces itself in simulated seconds. CallTimeout is wall-clock time.
package flymachines
