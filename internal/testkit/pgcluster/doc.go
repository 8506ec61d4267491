// Package pgcluster starts a throwaway PostgreSQL server from the server
// binaries installed on the machine (initdb, postgres), for tests, the
// sandbox and local development.
//
// A Cluster owns one data directory (<dir>/data) and one postgres process,
// listening only on a free loopback TCP port with trust authentication: it
// is for disposable data, never for anything that matters. Durability is
// traded for speed (fsync, full_page_writes and synchronous_commit are off).
// The data directory survives Stop and Restart, so a test can restart the
// server under a running program and a sandbox can reuse its directory.
//
// PostgreSQL refuses to run as root, so when the process runs as root the
// server binaries run as the OS user "postgres" (created by the Debian
// package), and the directories they write are handed to that user.
package pgcluster
