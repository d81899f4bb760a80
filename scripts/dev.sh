#!/usr/bin/env bash
# Builds Shale and runs a local cluster on loopback (`shale dev`). Extra arguments go
# to `shale dev`, e.g. `scripts/dev.sh --data-dir /tmp/shale`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
cargo build --release --locked --bin shale
exec "$CARGO_TARGET_DIR/release/shale" dev "$@"
