#!/usr/bin/env bash
# The reference deployment's test, automated (run deploy/scenario/up.sh
# first). From `client`, through `lb`: upload N images (50 KiB-2 MiB) and
# fetch each back, byte-compared. Then, with uploads and fetches going on,
# cut nas2 off the network for CUT_SECS seconds, bring it back, wait until
# `quizfs heal info` shows nothing pending; then the same with the Raft
# leader. Finally every image must be on every storage node's disk (its
# chunk, by blake3 hash) and byte-identical through every web server.
# After each cut, Prometheus (in lb) must have seen the node's metrics go
# unreachable and come back, and every mount's metrics the node down.
# Usage: demo.sh [--short] [N]     (--short: N=10, CUT_SECS=5)
# Last line: uploads N fetches M failed F max_pause_ms P heal_s H
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/common.sh"

N=40
CUT_SECS=${CUT_SECS:-20}
if [ "${1:-}" = --short ]; then
  N=10
  CUT_SECS=${CUT_SECS_SHORT:-5}
  shift
fi
N=${1:-$N}
[ -d "$SCENARIO_DIR/ca" ] || { echo "demo.sh: run deploy/scenario/up.sh first" >&2; exit 1; }
WORK=$SCENARIO_DIR/demo
rm -rf "$WORK"
mkdir -p "$WORK"
MANIFEST=$WORK/manifest.jsonl
FAILED=0

# --- the firewall: what the outside world may and may not reach
refused() { ! in_ns client timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }
in_ns client curl -sf --max-time 3 http://lb/health >/dev/null || { echo "client cannot reach lb:80" >&2; exit 1; }
for target in "nas1 $PORT" "s1 80" "nas2 $PORT"; do
  if refused $target; then
    echo "firewall: client -> ${target/ /:} refused, as it must be"
  else
    echo "firewall: client -> ${target/ /:} is reachable: the firewall is open" >&2
    FAILED=$((FAILED + 1))
  fi
done

# --- uploads and fetches through the load balancer
stats=$(in_ns client python3 "$HERE/demo.py" upload "$N" "$MANIFEST")
echo "uploaded and fetched back through lb: $stats"
read -r UPLOADS FETCHES F <<<"$(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); print(s["uploads"], s["fetches"], s["failed"])' "$stats")"
FAILED=$((FAILED + F))
MAX_PAUSE=0
MAX_HEAL=0

leader() {
  quizfs_s1 status nas1 2>/dev/null | awk '$4 == "leader" { split($2, a, ":"); print a[1] }'
}

# --- a storage node cut off the network under load, then brought back
cut() {
  local node=$1 stop="$WORK/stop-$1" out="$WORK/load-$1.json"
  echo "cutting $node off the network for ${CUT_SECS}s (uploads and fetches go on)"
  in_ns client python3 "$HERE/demo.py" load 600 "$stop" "$MANIFEST" "$out" &
  local load=$!
  in_ns "$node" ip link set eth0 down
  sleep "$CUT_SECS"
  in_ns "$node" ip link set eth0 up
  local back
  back=$(date +%s.%N)
  echo "$node is back; waiting for quizfs heal info to show nothing pending"
  local healed="" rc
  for _ in $(seq 1 100); do
    # --wait: until every node has nothing pending and has scanned past
    # the index the cluster had applied when the link came back (exit 1
    # after 60 s; exit 2 while nas1 cannot be reached yet).
    rc=0
    quizfs_s1 heal info nas1 --wait 60 >"$WORK/heal-$node.txt" 2>&1 || rc=$?
    if [ $rc -eq 0 ]; then
      healed=$(python3 -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$back")
      break
    fi
    [ $rc -eq 1 ] && break
    sleep 0.2
  done
  touch "$stop"
  wait "$load"
  if [ -z "$healed" ]; then
    echo "$node did not heal within 60 s" >&2
    cat "$WORK/heal-$node.txt" >&2
    FAILED=$((FAILED + 1))
    healed=60
  fi
  local s
  s=$(cat "$out")
  echo "  during the cut: $s; healed ${healed}s after the link came back"
  read -r u f fl ms <<<"$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["uploads"], s["fetches"], s["failed"], int(s["max_ms"]))' "$out")"
  UPLOADS=$((UPLOADS + u))
  FETCHES=$((FETCHES + f))
  FAILED=$((FAILED + fl))
  [ "$ms" -gt "$MAX_PAUSE" ] && MAX_PAUSE=$ms
  MAX_HEAL=$(python3 -c 'import sys; print(max(float(sys.argv[1]), float(sys.argv[2])))' "$MAX_HEAL" "$healed")
  # Monitoring saw it: Prometheus (in lb) found the node's metrics
  # unreachable during the cut, and reachable again now.
  local low="none" now="none"
  for _ in $(seq 1 50); do
    low=$(prom_query "min_over_time(up{instance=\"$node:$METRICS_PORT\"}[5m])" | prom_value || echo none)
    now=$(prom_query "up{instance=\"$node:$METRICS_PORT\"}" | prom_value || echo none)
    [ "$low" = 0 ] && [ "$now" = 1 ] && break
    sleep 0.2
  done
  if [ "$low" = 0 ] && [ "$now" = 1 ]; then
    echo "  prometheus saw $node go down and come back (up: min 0 over the cut, 1 now)"
  else
    echo "prometheus did not see $node go down and come back: min_over_time(up) $low, up $now" >&2
    FAILED=$((FAILED + 1))
  fi
  # ... and so did every web server's mount, by its own metrics.
  local mounts
  mounts=$(prom_query "count(min_over_time(quizfs_mount_node_up{node=\"$node:$PORT\"}[5m]) == 0)" | prom_value || echo none)
  if [ "$mounts" = 3 ]; then
    echo "  every mount's metrics show $node down during the cut"
  else
    echo "the mounts' metrics do not show $node down during the cut ($mounts of 3)" >&2
    FAILED=$((FAILED + 1))
  fi
}

cut nas2
L=$(leader)
[ -n "$L" ] || { echo "no leader after the first cut" >&2; FAILED=$((FAILED + 1)); L=nas1; }
echo "the Raft leader is $L"
cut "$L"

# --- every image on every storage node's disk, and through every web server
missing=0
total=0
while read -r line; do
  hash=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["blake3"])' "$line")
  total=$((total + 1))
  for n in "${NODES[@]}"; do
    f=$(chunk_path "$n" "$hash")
    if [ ! -f "$f" ] || [ "$(b3sum --no-names "$f")" != "$hash" ]; then
      echo "$n lacks a good copy of $hash" >&2
      missing=$((missing + 1))
    fi
  done
done <"$MANIFEST"
echo "on disk: $total images x ${#NODES[@]} nodes checked by blake3, $missing missing or wrong"
FAILED=$((FAILED + missing))
web=$(in_ns lb python3 "$HERE/demo.py" check-web "$MANIFEST")
echo "through every web server: $web"
FAILED=$((FAILED + $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["bad"])' "$web")))

echo "uploads $UPLOADS fetches $FETCHES failed $FAILED max_pause_ms $MAX_PAUSE heal_s $MAX_HEAL"
[ "$FAILED" -eq 0 ]
