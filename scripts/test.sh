#!/usr/bin/env bash
# Builds Shale and runs every test: unit, property, in-process cluster and
# multi-process fault tests. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
started=$(date +%s)
# A real S3 client for the gateway tests: boto3 in a venv kept beside the target dir.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "shale: installing python3 and python3-venv" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-venv >/dev/null
fi
venv="$HOME/.cache/shale/venv"
if ! "$venv/bin/python" -c 'import boto3' >/dev/null 2>&1 || [ ! -x "$venv/bin/aws" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'boto3>=1.34,<2' 'awscli>=1.32,<2'
fi
export SHALE_PYTHON="$venv/bin/python"
export SHALE_AWS="$venv/bin/aws"
cargo build --release --locked --workspace --all-targets
echo "shale: build took $(( $(date +%s) - started ))s" >&2
# Clusters in tests run real fsyncs and elections; two test threads keep a 2-core
# machine from starving election timers.
cargo test --release --locked --workspace "$@" -- --test-threads="${SHALE_TEST_THREADS:-2}"
echo "shale: build and tests took $(( $(date +%s) - started ))s" >&2
