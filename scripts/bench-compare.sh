#!/usr/bin/env bash
# The whole comparison in one command: installs GlusterFS and bindfs
# (Debian packages), builds quizfs in release mode, and runs
# `quizfs-bench compare`, which starts quizfs (nas1..nas3 in network
# namespaces, mounted here) and GlusterFS replica 3 (the same kind of
# namespaces, volume nas, network.ping-timeout 5, mount -t glusterfs),
# measures them beside the local disk and a bindfs passthrough, runs the
# failover cases, and rewrites the comparison section of BENCHMARKS.md, the
# charts in bench/charts and bench/results/compare.json. Everything it
# starts is stopped and removed at the end, also on Ctrl-C or failure.
# Needs root. Extra arguments go to `quizfs-bench compare` (e.g. --reps 1,
# --short, --systems quizfs,gluster); see `quizfs-bench compare --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "error: run as root (network namespaces, mounts)" >&2; exit 1; }
scripts/install-deps.sh glusterfs-server glusterfs-client bindfs dbench
cargo build --release --workspace --bins
exec target/release/quizfs-bench compare --command "scripts/bench-compare.sh $*" "$@"
