#!/usr/bin/env bash
# Builds quizfs, makes the cluster's certificates (once, in ./run/ca),
# starts a local three-node cluster on 127.0.0.21-23 with mutual TLS (data
# and logs in ./run), waits until it has a leader, mounts the volume at
# ./mnt/nas with a client certificate and prints `quizfs status`.
# `scripts/quickstart.sh stop` unmounts and stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${QUIZFS_RUN_DIR:-$PWD/run}
PEERS=127.0.0.21,127.0.0.22,127.0.0.23
BIN=$PWD/target/debug
MNT=$PWD/mnt/nas

stop() {
  if mountpoint -q "$MNT"; then "$BIN/quizfs" umount "$MNT" || umount -l "$MNT"; fi
  for f in "$RUN_DIR"/nas*.pid; do
    [ -f "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  echo "stopped"
}
if [ "${1:-}" = stop ]; then stop; exit 0; fi

scripts/install-deps.sh
cargo build --workspace --bins
scripts/install-helper.sh
mkdir -p "$RUN_DIR"
CA=$RUN_DIR/ca
if [ ! -f "$CA/ca.key" ]; then
  "$BIN/quizfs" cert init --peers "$PEERS" --out "$CA"
  "$BIN/quizfs" cert client local --ca "$CA"
fi
CLIENT_TLS=$CA/clients/local
for i in 1 2 3; do
  pidf="$RUN_DIR/nas$i.pid"
  if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then continue; fi
  nohup "$BIN/storaged" --peers "$PEERS" --listen "127.0.0.2$i" --data-dir "$RUN_DIR/nas$i" \
    --tls-dir "$CA/nodes/127.0.0.2$i" --metrics-listen "127.0.0.2$i:7421" \
    >>"$RUN_DIR/nas$i.log" 2>&1 &
  echo $! >"$pidf"
done
for _ in $(seq 1 150); do
  if "$BIN/quizfs" status 127.0.0.21 --tls-dir "$CLIENT_TLS" >/dev/null 2>&1; then
    mkdir -p "$MNT"
    if ! mountpoint -q "$MNT"; then
      "$BIN/quizfs" mount 127.0.0.21:/nas "$MNT" \
        -o backup_servers=127.0.0.22,127.0.0.23,tls_dir="$CLIENT_TLS",log="$RUN_DIR/mount.log"
    fi
    "$BIN/quizfs" status 127.0.0.21 --tls-dir "$CLIENT_TLS"
    echo "cluster running, volume nas mounted at $MNT"
    echo "logs and data in $RUN_DIR; stop with: scripts/quickstart.sh stop"
    exit 0
  fi
  sleep 0.2
done
echo "error: the cluster did not elect a leader within 30 s; see $RUN_DIR/nas*.log" >&2
"$BIN/quizfs" status 127.0.0.21 --tls-dir "$CLIENT_TLS" || true
exit 1
