#!/usr/bin/env bash
# The scaling table: builds quizfs (release) and runs `quizfs-bench scale`,
# which starts nas1..nas3 in network namespaces with a mount, fills the
# volume to 1,000, 10,000 and 100,000 files and measures uploads and
# metadata operations at each, then sequential write and read of 64 MiB,
# 1 GiB and 4 GiB files. It rewrites the scaling section of BENCHMARKS.md
# and bench/results/scale.json. Everything it starts is stopped and removed
# at the end. Needs root. Extra arguments go to `quizfs-bench scale` (e.g.
# --levels 1000,10000 --seq-mib 64 --reps 1; see `quizfs-bench scale --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "error: run as root (network namespaces, mounts)" >&2; exit 1; }
scripts/install-deps.sh
cargo build --release --workspace --bins
exec target/release/quizfs-bench scale --command "scripts/bench-scale.sh $*" "$@"
