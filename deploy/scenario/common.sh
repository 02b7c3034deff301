# Shared by up.sh, demo.sh and down.sh: the topology of the reference
# deployment on one machine. Sourced, not run.

# Where the scenario keeps its state: certificates, node data, uploads
# mount points, logs, PID files.
SCENARIO_DIR=${SCENARIO_DIR:-/var/tmp/quizfs-scenario}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${QUIZFS_BIN_DIR:-$REPO/target/debug}
BRIDGE=qzdemo0
NET=10.214.0
PORT=7420
# storaged's /metrics and /health; Prometheus (in lb) scrapes them.
METRICS_PORT=7421
# Each web server's mount serves its metrics here (-o metrics=).
MOUNT_METRICS_PORT=7422
PROM_PORT=9090

# name -> address on the bridge
declare -A ADDR=(
  [lb]=$NET.2
  [nas1]=$NET.11 [nas2]=$NET.12 [nas3]=$NET.13
  [s1]=$NET.21 [s2]=$NET.22 [s3]=$NET.23
  [client]=$NET.100
)
NODES=(nas1 nas2 nas3)
WEBS=(s1 s2 s3)
ALL=(lb nas1 nas2 nas3 s1 s2 s3 client)

# Runs a command inside namespace $1 (with its /etc/hosts).
in_ns() {
  local ns=$1
  shift
  ip netns exec "$ns" "$@"
}

# The chunk file of a blake3 hash in a node's data directory.
chunk_path() {
  local node=$1 hash=$2
  echo "$SCENARIO_DIR/$node/data/chunks/${hash:0:2}/${hash:2:2}/$hash"
}

# `quizfs` with s1's client certificate, run in s1 (which the firewall
# lets reach the storage nodes).
quizfs_s1() {
  in_ns s1 "$BIN/quizfs" "$@" --tls-dir "$SCENARIO_DIR/ca/clients/s1"
}

# A PromQL query to the scenario's Prometheus (in lb): the JSON answer.
prom_query() {
  in_ns lb curl -sf --max-time 3 -G "http://lb:$PROM_PORT/api/v1/query" --data-urlencode "query=$1"
}

# The first value of a PromQL answer on stdin, or "none".
prom_value() {
  python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "none")'
}
