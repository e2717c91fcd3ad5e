#!/usr/bin/env bash
# `make demo`: stand up a root and a leaf cluster on this machine, establish trust from
# the leaf (token on the root, trusted_cluster on the leaf), log in at the root and run
# `uname -a` on the leaf's node through root proxy → reverse tunnel → leaf node.
# `make demo-down` stops both and removes their state.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=${GATEHOUSE_DEMO_DIR:-/tmp/gatehouse-demo}
BIN=$PWD/.venv/bin
export GATE_HOME=$DEMO/gate
ROOT=root.demo
LEAF=leaf.demo

stop_site() {
  local pidfile=$DEMO/$1/gatehouse.pid
  if [ -f "$pidfile" ]; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null || break; sleep 0.1; done
  fi
}

down() {
  stop_site leaf
  stop_site root
  rm -rf "$DEMO"
  echo "demo stopped and its state removed"
}

# site NAME CLUSTER PORT_PREFIX NODE EXTRA_GENERAL — write a config and start it detached.
site() {
  local name=$1 cluster=$2 p=$3 node=$4 extra=$5 dir=$DEMO/$1
  mkdir -p "$dir"
  cat > "$dir/gatehouse.yaml" <<YAML
gatehouse:
  nodename: $node
  data_dir: $dir/data
  log: {output: $dir/gatehouse.log, severity: INFO}
  $extra
auth_service: {enabled: true, cluster_name: $cluster, listen_addr: 127.0.0.1:${p}25}
proxy_service: {enabled: true, web_listen_addr: 127.0.0.1:${p}80, listen_addr: 127.0.0.1:${p}23, tunnel_listen_addr: 127.0.0.1:${p}24}
ssh_service: {enabled: true, listen_addr: 127.0.0.1:${p}22, labels: {env: demo, site: $name}}
YAML
  setsid "$BIN/gatehouse" start -c "$dir/gatehouse.yaml" --pid-file "$dir/gatehouse.pid" </dev/null >"$dir/gatehouse.out" 2>&1 &
  for _ in $(seq 150); do
    "$BIN/python" -c "import ssl, urllib.request as u; u.urlopen('https://127.0.0.1:${p}80/webapi/ping', context=ssl._create_unverified_context(), timeout=1)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "the $name cluster did not start; see $dir/gatehouse.log" >&2
  exit 1
}

up() {
  { [ -f "$DEMO/root/gatehouse.pid" ] || [ -f "$DEMO/leaf/gatehouse.pid" ]; } && down
  mkdir -p "$DEMO"
  id visitor >/dev/null 2>&1 || { [ "$(id -u)" = 0 ] && useradd --create-home visitor; } || true
  login=$(id visitor >/dev/null 2>&1 && echo visitor || id -un)
  echo "==> root cluster $ROOT (ports 30xx) and leaf cluster $LEAF (ports 40xx; the leaf accepts the root's self-signed demo certificate)"
  site root $ROOT 30 root-node ""
  site leaf $LEAF 40 leaf-node "insecure: true"
  rootctl() { "$BIN/gatectl" -c "$DEMO/root/gatehouse.yaml" "$@"; }
  leafctl() { "$BIN/gatectl" -c "$DEMO/leaf/gatehouse.yaml" "$@"; }

  echo "\$ gatectl tokens add --type=trusted_cluster --ttl=15m      # on the root"
  token=$(rootctl tokens add --type=trusted_cluster --ttl=15m --labels=env=demo --format json |
          "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  cat > "$DEMO/leaf/trusted_cluster.yaml" <<YAML
kind: trusted_cluster
version: v2
metadata: {name: $ROOT}
spec:
  enabled: true
  token: $token
  web_proxy_addr: 127.0.0.1:3080
  role_map:
    - {remote: access, local: [access]}
YAML
  echo "\$ gatectl create trusted_cluster.yaml                       # on the leaf"
  leafctl create "$DEMO/leaf/trusted_cluster.yaml"
  for _ in $(seq 100); do rootctl get rc --format json | grep -q '"online"' && break; sleep 0.1; done

  password=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "\$ gatectl users add alice --roles=access --logins=$login      # on the root"
  echo "$password" | rootctl users add alice --roles=access --logins="$login" --password-stdin
  echo "\$ gate login --proxy=127.0.0.1:3080 --user=alice --insecure"
  echo "$password" | "$BIN/gate" login --proxy=127.0.0.1:3080 --user=alice --insecure --password-stdin
  echo "\$ gate clusters"; "$BIN/gate" clusters
  echo "\$ gate ls --cluster=$LEAF"; "$BIN/gate" ls --cluster=$LEAF
  echo "\$ gate ssh --cluster=$LEAF $login@leaf-node uname -a"
  "$BIN/gate" ssh --cluster=$LEAF "$login@leaf-node" uname -a
  cat <<MSG

Both clusters keep running in the background (logs: $DEMO/{root,leaf}/gatehouse.log).
Try:   GATE_HOME=$GATE_HOME $BIN/gate ssh --cluster=$LEAF $login@leaf-node
       GATE_HOME=$GATE_HOME $BIN/gate status
Stop:  make demo-down
MSG
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
