#!/usr/bin/env bash
# Installs what building and testing quizfs needs on a fresh Debian machine.
# protoc comes from the protoc-bin-vendored crate, so no Debian package is
# needed for it. Idempotent: installs only what is missing.
set -euo pipefail

PKGS=(gcc pkg-config)
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "error: cargo (Rust toolchain) is required" >&2; exit 1; }
