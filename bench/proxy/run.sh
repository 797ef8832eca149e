#!/bin/sh
# Throughput of pgentra proxy next to a direct connection and pgbouncer,
# against one PostgreSQL over verified TLS. Not run by CI. Needs the
# PostgreSQL server binaries, pgbench and pgbouncer (installed here with
# apt-get when missing, if run as root). Flags go to the Go program:
#   bench/proxy/run.sh [-duration 20s] [-rounds 5] [-scale 10] [-cpuprofile proxy-cpu.pprof]
set -eu
cd "$(dirname "$0")/../.."
if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
	if [ "$(id -u)" = 0 ]; then
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
	else
		echo "pgbouncer is missing: sudo apt-get install pgbouncer" >&2
		exit 1
	fi
fi
nproc_=$(nproc)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
echo "machine: $nproc_ cores, $cpu; $(go version); $(pgbouncer --version 2>/dev/null | head -1 || /usr/sbin/pgbouncer --version | head -1); $(pgbench --version)"
bin=$(mktemp -d)/bench-proxy
trap 'rm -rf "$(dirname "$bin")"' EXIT
go build -o "$bin" ./bench/proxy
"$bin" "$@"
