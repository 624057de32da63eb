#!/usr/bin/env bash
# Short fuzzing run for CI and local checks: each target for N seconds
# (default 20). Exits non-zero if a target crashes or fails to build.
#
# The machine has a stable toolchain only; cargo-fuzz needs nightly flags
# (-Zsanitizer), which RUSTC_BOOTSTRAP=1 unlocks on stable.
set -euo pipefail

secs="${1:-20}"
cd "$(dirname "$0")"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
for target in stun_parse channel_data_parse; do
    mkdir -p "corpus/$target"
    echo "== fuzzing $target for ${secs}s"
    # First directory collects new inputs (gitignored); seeds/ is read-only.
    cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1
done
echo "== fuzzing finished without crashes"
