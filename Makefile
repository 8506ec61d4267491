# make test: what CI runs (gofmt, go vet, every test with the race detector).
# make bench: the fleet benchmark (2,000 machines measured on their fourth rollout,
# so planned from drain history; 1,000 drains waiting at once; 10,000 machines);
# writes bench/results.md in about 35 minutes.
.PHONY: test bench

test:
	./.ci/test

bench:
	go run ./cmd/migrator bench --large-machines 10000 --large-time-scale 5 --out bench/results.md
