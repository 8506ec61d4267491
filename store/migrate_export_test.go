package store

// Test hooks: run the migration code over a file set other than the
// embedded one.
var (
	UpgradeFS     = upgrade
	StatusFS      = status
	SchemaFilesFS = schemaFiles
)
