#!/usr/bin/env bash
# Installs what building and testing quizfs needs on a fresh Debian machine:
# a C toolchain, fuse3 (the kernel interface's fusermount3 and /dev/fuse
# set-up), python3 (the POSIX check scripts of the tests). protoc comes from
# the protoc-bin-vendored crate. Extra package names given as arguments are
# installed too (the benchmark adds glusterfs-server and bindfs).
# Idempotent: installs only what is missing.
set -euo pipefail

PKGS=(gcc pkg-config fuse3 python3 "$@")
missing=()
for p in "${PKGS[@]}"; do
  # "install ok installed": a package removed but not purged is still
  # known to dpkg (its configuration files stay) without its programs.
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
    || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "error: cargo (Rust toolchain) is required" >&2; exit 1; }
