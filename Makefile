# make test: what CI runs (gofmt, go vet, every test with the race detector).
# make bench: the fleet benchmark (2,000 machines measured on their fourth rollout,
# so planned from drain history; 1,000 drains waiting at once; 10,000 machines;
# 2,000 talking agents migrated begin-at-once and idle-first; 10,000 machines moved by
# 1 and 3 real `migrator serve` processes and by 3 with one killed; a 200-machine run
# with and without a flood of /readyz and /metrics; a 2,000-agent auto-update run with
# and without 100 customer env edits through the API), then the activity scenario again
# on seed 7 (1,000 agents, B = 50); writes bench/results.md in about 90 minutes on 2
# cores (bench/README.md). `go run ./cmd/migrator bench --scenario activity` runs one
# scenario alone (it replaces its sections of the results file and keeps the rest).
.PHONY: test bench

test:
	./.ci/test

bench:
	go run ./cmd/migrator bench --large-machines 10000 --large-time-scale 5 --out bench/results.md
	go run ./cmd/migrator bench --scenario activity --seed 7 --activity-machines 1000 --activity-budget 50 --out bench/results.md
