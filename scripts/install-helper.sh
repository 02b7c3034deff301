#!/usr/bin/env bash
# Installs the quizfs binary built in target/debug as /usr/local/bin/quizfs
# and links /sbin/mount.quizfs to it, so that `mount -t quizfs` and fstab
# lines with type quizfs work. Needs root (run by quickstart.sh and test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/target/debug/quizfs
[ -x "$BIN" ] || { echo "error: $BIN is not built (cargo build --workspace --bins)" >&2; exit 1; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO install -m 0755 "$BIN" /usr/local/bin/quizfs
$SUDO ln -sf /usr/local/bin/quizfs /sbin/mount.quizfs
