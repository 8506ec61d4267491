# make test: what CI runs (gofmt, go vet, every test with the race detector).
# make bench: the fleet benchmark (2,000 and 10,000 machines, and 1,000 drains
# waiting at once); writes bench/results.md in about 30 minutes. The 10,000-machine
# run gets a 20-connection pool: with serve's default (pgx: 4) it starves (see the results).
.PHONY: test bench

test:
	./.ci/test

bench:
	go run ./cmd/migrator bench --large-machines 10000 --large-time-scale 5 --large-max-conns 20 --out bench/results.md
