#!/usr/bin/env bash
# The reference deployment on one machine, with quizfs in GlusterFS's place:
# network namespaces lb, s1..s3, nas1..nas3 and client on one bridge
# ($NET.0/24), each with its own address and /etc/netns/NAME/hosts;
# storaged on nas1..nas3 (mutual TLS), each web server mounting the volume
# at its public/uploads with `mount -t quizfs` and running the upload
# application on port 80, HAProxy on lb, and the firewall of the reference
# deployment in nftables, and Debian's Prometheus in lb scraping the
# nodes' metrics with the example alert rules. Needs root. On failure it removes what it made.
# State, logs and certificates: $SCENARIO_DIR (default /var/tmp/quizfs-scenario).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/common.sh"

fail() {
  echo "up.sh: $*" >&2
  "$HERE/down.sh" >/dev/null 2>&1 || true
  exit 1
}
trap 'fail "failed at line $LINENO"' ERR

[ "$(id -u)" -eq 0 ] || { echo "up.sh: needs root (network namespaces, mounts)" >&2; exit 1; }
if ip netns list | grep -qw nas1 || [ -d "$SCENARIO_DIR" ]; then
  echo "up.sh: a scenario is already up (or left over): run deploy/scenario/down.sh first" >&2
  exit 1
fi
"$REPO/scripts/install-deps.sh" haproxy nftables b3sum curl prometheus >/dev/null
if [ ! -x "$BIN/storaged" ] || [ ! -x "$BIN/quizfs" ]; then
  (cd "$REPO" && cargo build --workspace --bins)
fi
# mount -t quizfs needs /sbin/mount.quizfs.
"$REPO/scripts/install-helper.sh" >/dev/null

mkdir -p "$SCENARIO_DIR"/{logs,pids}

# --- network: one bridge, one namespace per machine
ip link add "$BRIDGE" type bridge
ip link set "$BRIDGE" up
hosts=$'127.0.0.1 localhost\n'
for n in "${ALL[@]}"; do hosts+="${ADDR[$n]} $n"$'\n'; done
for n in "${ALL[@]}"; do
  ip netns add "$n"
  mkdir -p "/etc/netns/$n"
  printf '%s' "$hosts" >"/etc/netns/$n/hosts"
  ip link add "qzd-$n" type veth peer name eth0 netns "$n"
  ip link set "qzd-$n" master "$BRIDGE" up
  in_ns "$n" ip addr add "${ADDR[$n]}/24" dev eth0
  in_ns "$n" ip link set eth0 up
  in_ns "$n" ip link set lo up
done

# --- firewall (nftables, one ruleset per machine)
rules() {
  local role=$1
  local allow
  case $role in
    lb) allow="tcp dport 80 accept" ;;
    web) allow="ip saddr ${ADDR[lb]} tcp dport $MOUNT_METRICS_PORT accept
    ip saddr ${ADDR[lb]} tcp dport 80 accept" ;;
    nas) allow="ip saddr ${ADDR[lb]} tcp dport $METRICS_PORT accept
    ip saddr { ${ADDR[s1]}, ${ADDR[s2]}, ${ADDR[s3]}, ${ADDR[nas1]}, ${ADDR[nas2]}, ${ADDR[nas3]} } tcp dport $PORT accept" ;;
  esac
  cat <<EOF
table inet quizfs_demo {
  chain input {
    type filter hook input priority 0; policy drop;
    iif lo accept
    ct state established,related accept
    ip protocol icmp accept
    $allow
  }
}
EOF
}
echo "firewall rules:"
for n in lb "${WEBS[@]}" "${NODES[@]}"; do
  case $n in lb) role=lb ;; s*) role=web ;; nas*) role=nas ;; esac
  rules "$role" >"$SCENARIO_DIR/nft-$n.conf"
  in_ns "$n" nft -f "$SCENARIO_DIR/nft-$n.conf"
  echo "  $n: $(grep -E 'accept$' "$SCENARIO_DIR/nft-$n.conf" | tail -1 | sed 's/^ *//') (everything else dropped)"
done
echo "  client: the outside world, no rules of its own"

# --- certificates: the cluster CA, one per node, one per web server
"$BIN/quizfs" cert init --peers nas1,nas2,nas3 --out "$SCENARIO_DIR/ca" >/dev/null
for s in "${WEBS[@]}"; do "$BIN/quizfs" cert client "$s" --ca "$SCENARIO_DIR/ca" >/dev/null; done

# --- storage nodes
# Started with `ip netns exec` itself, not through in_ns: a backgrounded
# shell function runs in a subshell, and $! would be that subshell's PID
# rather than the daemon's, which down.sh signals.
for n in "${NODES[@]}"; do
  mkdir -p "$SCENARIO_DIR/$n/data"
  ip netns exec "$n" nohup "$BIN/storaged" --peers nas1,nas2,nas3 --name "$n" \
    --data-dir "$SCENARIO_DIR/$n/data" --tls-dir "$SCENARIO_DIR/ca/nodes/$n" \
    --heal-interval-ms 500 --metrics-listen "${ADDR[$n]}:$METRICS_PORT" \
    >>"$SCENARIO_DIR/logs/$n.log" 2>&1 &
  echo $! >"$SCENARIO_DIR/pids/$n"
done
for _ in $(seq 1 150); do
  quizfs_s1 status nas1 >/dev/null 2>&1 && break
  sleep 0.2
done
quizfs_s1 status nas1 >/dev/null || fail "the storage nodes did not elect a leader; see $SCENARIO_DIR/logs"

# --- web servers: mount the volume at public/uploads, serve the application
for s in "${WEBS[@]}"; do
  up="$SCENARIO_DIR/$s/public/uploads"
  mkdir -p "$up"
  # One session per web server: `ip netns exec` gives it a private mount
  # namespace, which the mount and the application share.
  ip netns exec "$s" nohup bash -c '
    mount -t quizfs nas1:/nas "$1" -o "_netdev,backup_servers=nas2:nas3,tls_dir=$2,log=$3,metrics=$6" || exit 1
    exec python3 "$4" --dir "$1" --name "$5" --port 80' _ \
    "$up" "$SCENARIO_DIR/ca/clients/$s" "$SCENARIO_DIR/logs/$s-mount.log" "$HERE/app.py" "$s" \
    "${ADDR[$s]}:$MOUNT_METRICS_PORT" \
    >>"$SCENARIO_DIR/logs/$s-app.log" 2>&1 &
  echo $! >"$SCENARIO_DIR/pids/$s-app"
done

# --- load balancer
cat >"$SCENARIO_DIR/haproxy.cfg" <<EOF
global
  maxconn 2000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  retries 3
  option redispatch
frontend www
  bind ${ADDR[lb]}:80
  default_backend web
backend web
  balance roundrobin
  option httpchk GET /health
  default-server inter 500ms fall 2 rise 1
  server s1 s1:80 check
  server s2 s2:80 check
  server s3 s3:80 check
EOF
in_ns lb haproxy -f "$SCENARIO_DIR/haproxy.cfg" -D -p "$SCENARIO_DIR/pids/haproxy" \
  >>"$SCENARIO_DIR/logs/haproxy.log" 2>&1

for _ in $(seq 1 150); do
  ok=0
  for s in "${WEBS[@]}"; do
    in_ns lb curl -sf --max-time 1 "http://$s/health" >/dev/null 2>&1 && ok=$((ok + 1))
  done
  [ "$ok" -eq 3 ] && break
  sleep 0.2
done
[ "$ok" -eq 3 ] || fail "web servers not all up; see $SCENARIO_DIR/logs"
for _ in $(seq 1 50); do
  in_ns client curl -sf --max-time 1 "http://lb/health" >/dev/null 2>&1 && break
  sleep 0.2
done
in_ns client curl -sf --max-time 2 "http://lb/health" >/dev/null || fail "lb does not answer"

# --- monitoring: Prometheus in lb scrapes every node and every mount each
# second (the firewall lets only lb reach the metrics ports), with the
# example rules.
cat >"$SCENARIO_DIR/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files:
  - $REPO/deploy/prometheus/alerts.yml
scrape_configs:
  - job_name: quizfs-nodes
    static_configs:
      - targets: ['nas1:$METRICS_PORT', 'nas2:$METRICS_PORT', 'nas3:$METRICS_PORT']
  - job_name: quizfs-mounts
    static_configs:
      - targets: ['s1:$MOUNT_METRICS_PORT', 's2:$MOUNT_METRICS_PORT', 's3:$MOUNT_METRICS_PORT']
EOF
ip netns exec lb nohup prometheus --config.file="$SCENARIO_DIR/prometheus.yml" \
  --storage.tsdb.path="$SCENARIO_DIR/prometheus-data" \
  --web.listen-address="${ADDR[lb]}:$PROM_PORT" >>"$SCENARIO_DIR/logs/prometheus.log" 2>&1 &
echo $! >"$SCENARIO_DIR/pids/prometheus"
seen=none
for _ in $(seq 1 150); do
  seen=$(prom_query 'sum(up)' 2>/dev/null | prom_value 2>/dev/null || echo none)
  [ "$seen" = 6 ] && break
  sleep 0.2
done
[ "$seen" = 6 ] || fail "Prometheus in lb does not see the three nodes and three mounts up ($seen); see $SCENARIO_DIR/logs/prometheus.log"
echo "monitoring: Prometheus on lb:$PROM_PORT scrapes nas1..nas3:$METRICS_PORT and the mounts on s1..s3:$MOUNT_METRICS_PORT every second"

trap - ERR
quizfs_s1 status nas1
echo "up: client -> lb (${ADDR[lb]}:80) -> s1..s3 (uploads on quizfs) -> nas1..nas3; state in $SCENARIO_DIR"
