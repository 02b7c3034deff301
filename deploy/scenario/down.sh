#!/usr/bin/env bash
# Removes everything up.sh made: the web applications, their quizfs mounts,
# HAProxy, the storage nodes (each by the PID up.sh recorded, or found by
# the scenario's own paths on their command line), the namespaces with
# their firewall rules, the bridge, /etc/netns/NAME and $SCENARIO_DIR.
# Safe to run twice, and on a half-built scenario.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/common.sh"

[ "$(id -u)" -eq 0 ] || { echo "down.sh: needs root" >&2; exit 1; }

# Processes whose command line names the scenario's directory are ours.
ours() {
  local p
  for p in /proc/[0-9]*; do
    if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "$SCENARIO_DIR/"; then
      echo "${p#/proc/}"
    fi
  done
}

stop() {
  local pids=("$@") p
  [ ${#pids[@]} -gt 0 ] || return 0
  kill -TERM "${pids[@]}" 2>/dev/null
  for _ in $(seq 1 50); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && return 0
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null
  return 0
}

# The PIDs up.sh recorded in pids/NAME, for each NAME given.
recorded() {
  local n
  for n in "$@"; do
    [ -f "$SCENARIO_DIR/pids/$n" ] && cat "$SCENARIO_DIR/pids/$n"
  done
  return 0
}

if [ -d "$SCENARIO_DIR" ]; then
  # Web applications first, then HAProxy, the mounts (SIGTERM unmounts),
  # then the storage nodes.
  mapfile -t apps < <(recorded s1-app s2-app s3-app)
  stop "${apps[@]}"
  mapfile -t hp < <(recorded haproxy prometheus)
  stop "${hp[@]}"
  mounts=()
  for p in $(ours); do
    tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q "quizfs mount" && mounts+=("$p")
  done
  stop "${mounts[@]}"
  mapfile -t nodes < <(recorded "${NODES[@]}")
  stop "${nodes[@]}"
  # Anything else still naming the scenario's directory.
  mapfile -t rest < <(ours)
  stop "${rest[@]}"
fi

for n in "${ALL[@]}"; do
  if ip netns list | grep -qw "^$n"; then
    ip netns delete "$n"
  fi
  ip link delete "qzd-$n" 2>/dev/null
  rm -rf "/etc/netns/$n"
done
ip link delete "$BRIDGE" 2>/dev/null
# Mount points of the web servers, if a mount outlived its namespace.
if [ -d "$SCENARIO_DIR" ]; then
  grep -F " $SCENARIO_DIR/" /proc/mounts | awk '{print $2}' | while read -r m; do umount -l "$m"; done
  rm -rf "$SCENARIO_DIR"
fi
echo "down: namespaces, processes, mounts, rules and $SCENARIO_DIR removed"
