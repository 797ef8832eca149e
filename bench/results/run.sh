#!/bin/bash
# Reproduces bench/results/*.txt: each benchmark's variants run one after
# the other in one process, and the process is run 6 times (10 for
# the warm hook and Connect), so load drifting on a shared machine hits every variant alike.
# Usage, from the module root: bench/results/run.sh [outdir]
set -e
out=${1:-bench/results}
mkdir -p "$out"
tmp=$(mktemp -d)
go test -c -o "$tmp/bench.test" ./bench
go test -c -o "$tmp/root.test" .
run() { # name dir binary n args...
  local name=$1 dir=$2 bin=$3 n=$4; shift 4
  : > "$out/$name.txt"
  for i in $(seq "$n"); do
    uptime >&2
    (cd "$dir" && "$bin" -test.run '^$' -test.count 1 "$@") >> "$out/$name.txt"
  done
}
run warm    bench "$tmp/bench.test" 10 -test.bench 'WarmHook|ClockRead'
run parts   .     "$tmp/root.test"  10 -test.bench WarmHookParts
run cold    bench "$tmp/bench.test" 6  -test.bench ColdPool -test.benchtime 3x
run stall   bench "$tmp/bench.test" 6  -test.bench RefreshStall -test.benchtime 1x
run connect bench "$tmp/bench.test" 10 -test.bench 'Connect$' -test.benchtime 3s
run mem     .     "$tmp/root.test"  6  -test.bench TokenSourceMemory -test.benchtime 10000x
rm -r "$tmp"
