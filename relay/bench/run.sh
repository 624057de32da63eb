#!/usr/bin/env bash
# Builds release rtc-relay and relay-bench, then runs `relay-bench compare`
# (rtc-relay vs coturn vs the bare forwarder) with any extra arguments given,
# e.g.: relay/bench/run.sh --rounds 3 --seconds 10 --window 16 --idle-allocations 10000
# Needs coturn (turnserver, turnutils_uclient, turnutils_peer); perf is optional.
# All traffic stays on 127.0.0.1; every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in turnserver turnutils_uclient turnutils_peer; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install coturn)"; exit 1; }
done
cargo build --release -p relay --bin rtc-relay
cargo build --release -p relay-bench
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ), load: $(cut -d' ' -f1-3 /proc/loadavg)"
ulimit -n 65536 2>/dev/null || true
./target/release/relay-bench compare "$@"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
