# make test: what CI runs (gofmt, go vet, every test with the race detector).
# make bench: the fleet benchmark (2,000 machines measured on their fourth rollout,
# so planned from drain history; 1,000 drains waiting at once; 10,000 machines; 2,000
# talking agents migrated begin-at-once and idle-first); writes bench/results.md in
# about 45 minutes. `go run ./cmd/migrator bench --scenario activity` runs the last alone.
.PHONY: test bench

test:
	./.ci/test

bench:
	go run ./cmd/migrator bench --large-machines 10000 --large-time-scale 5 --out bench/results.md
