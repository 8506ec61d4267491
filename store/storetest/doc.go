// Package storetest gives tests real PostgreSQL databases, no mocks.
//
// One throwaway cluster (internal/testkit/pgcluster) is started per test binary, on
// first use, from the PostgreSQL server binaries installed on the machine,
// and stopped and removed when the binary exits. A template database is
// migrated once with store.Upgrade; every test then gets its own database
// cloned from it (CREATE DATABASE ... TEMPLATE, fast) and dropped in
// t.Cleanup, so tests are isolated and may run in parallel.
//
// When TEST_DATABASE_URL is set, that server is used instead of starting
// one (the role needs CREATEDB); the template and test databases are still
// created there, with names unique to the test binary.
//
// A package that uses it needs a TestMain:
//
//	func TestMain(m *testing.M) { storetest.Main(m) }
package storetest
