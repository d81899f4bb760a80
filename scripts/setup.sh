#!/usr/bin/env bash
# Installs what building Shale needs beyond the Rust toolchain (clang/libclang for
# RocksDB's bindings, a C++ compiler), then sets the shared target directory.
# Sourced by scripts/dev.sh and scripts/test.sh; safe to run again.
set -euo pipefail

need_pkgs=()
command -v clang >/dev/null 2>&1 || need_pkgs+=(clang)
command -v c++ >/dev/null 2>&1 || need_pkgs+=(g++)
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
  need_pkgs+=(libclang-dev)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "shale: installing system packages: ${need_pkgs[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
fi
command -v cargo >/dev/null 2>&1 || { echo "shale: cargo not found; install Rust (rustup) first" >&2; exit 1; }

# One warm target directory outside the checkout, shared by every clone on this machine:
# RocksDB's C++ build is the longest step and is then done once. Correctness never
# depends on it; delete it any time.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/shale/target}"
mkdir -p "$CARGO_TARGET_DIR"
