// Package bench holds the benchmarks behind BENCHMARKS.md. It has no API:
// everything is in its test files, which measure entraauth's Hook side by
// side with two baselines in the same process — a BeforeConnect that only
// sets a fixed password (the floor), and one that calls the credential on
// every connection (what Microsoft's samples for other languages do) —
// against a real PostgreSQL over TLS started by internal/pgtest.
//
// Run them with
//
//	go test -run '^$' -bench . -count 6 ./bench
//
// (see BENCHMARKS.md for the exact command of each benchmark) and compare
// the variants of one run with benchstat -col /auth.
package bench
