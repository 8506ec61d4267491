// Package migrations holds migrator's SQL schema as numbered, forward-only
// files (NNN_name.sql), embedded in the binary. store applies them, after
// River's own migrations, with `migrator db upgrade`.
package migrations

import "embed"

// FS holds every *.sql file of this directory.
//
//go:embed *.sql
var FS embed.FS
