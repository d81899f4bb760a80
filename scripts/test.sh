#!/usr/bin/env bash
# Builds Shale and runs every test: unit, property, in-process cluster and
# multi-process fault tests. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
started=$(date +%s)
cargo build --release --locked --workspace --all-targets
echo "shale: build took $(( $(date +%s) - started ))s" >&2
# Clusters in tests run real fsyncs and elections; two test threads keep a 2-core
# machine from starving election timers.
cargo test --release --locked --workspace "$@" -- --test-threads="${SHALE_TEST_THREADS:-2}"
echo "shale: build and tests took $(( $(date +%s) - started ))s" >&2
