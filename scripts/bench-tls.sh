#!/usr/bin/env bash
# What mutual TLS costs: the same workloads on a local three-node cluster
# (127.0.0.21-23, release build) with TLS (the default) and with --insecure,
# one after the other. Prints both tables; JSON and logs in
# $OUT/{tls,insecure}.json and $OUT/*.log (the nodes' data is removed).
# Usage: scripts/bench-tls.sh [WORKLOADS] [REPS]   (default: seq,uploads,meta 3)
# Everything it starts is stopped, by PID, when it ends, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKLOADS=${1:-seq,uploads,meta}
REPS=${2:-3}
OUT=${OUT:-/var/tmp/quizfs-bench-tls}
BIN=$PWD/target/release
PEERS=127.0.0.21,127.0.0.22,127.0.0.23
PORT=7450
cargo build --release --workspace --bins >/dev/null
rm -rf "$OUT"
mkdir -p "$OUT"
PIDS=()
MNT=""
cleanup() {
  if [ -n "$MNT" ] && mountpoint -q "$MNT"; then umount -l "$MNT" || true; fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap cleanup EXIT INT TERM

"$BIN/quizfs" cert init --peers "${PEERS//,/:$PORT,}:$PORT" --out "$OUT/ca" >/dev/null
"$BIN/quizfs" cert client bench --ca "$OUT/ca" >/dev/null

for mode in tls insecure; do
  peers="127.0.0.21:$PORT,127.0.0.22:$PORT,127.0.0.23:$PORT"
  for i in 1 2 3; do
    if [ "$mode" = tls ]; then sec=(--tls-dir "$OUT/ca/nodes/127.0.0.2$i"); else sec=(--insecure); fi
    "$BIN/storaged" --peers "$peers" --listen "127.0.0.2$i:$PORT" \
      --data-dir "$OUT/$mode/nas$i" "${sec[@]}" >"$OUT/$mode-nas$i.log" 2>&1 &
    PIDS+=($!)
  done
  if [ "$mode" = tls ]; then csec=(--tls-dir "$OUT/ca/clients/bench"); opt="tls_dir=$OUT/ca/clients/bench"
  else csec=(--insecure); opt=insecure; fi
  for _ in $(seq 1 150); do
    "$BIN/quizfs" status "127.0.0.21:$PORT" "${csec[@]}" >/dev/null 2>&1 && break
    sleep 0.2
  done
  MNT=$OUT/$mode-mnt
  mkdir -p "$MNT"
  "$BIN/quizfs" mount "127.0.0.21:$PORT:/nas" "$MNT" -f -o "$opt" 2>"$OUT/$mode-mount.log" &
  PIDS+=($!)
  for _ in $(seq 1 100); do mountpoint -q "$MNT" && break; sleep 0.1; done
  echo "== $mode"
  "$BIN/quizfs-bench" run "$MNT" --name "quizfs-$mode" --workloads "$WORKLOADS" \
    --reps "$REPS" --json "$OUT/$mode.json"
  cleanup
  # The nodes' data (gigabytes after the sequential workload) goes; the
  # JSON and the logs stay.
  rm -rf "${OUT:?}/$mode" "$MNT"
  MNT=""
done
