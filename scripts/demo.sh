#!/usr/bin/env bash
# `make demo`: start one Gatehouse cluster (auth + proxy + node) on this machine, create a
# user, log in with gate and run `uname -a` on the node through the proxy.
# `make demo-down` stops it and removes its state.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=${GATEHOUSE_DEMO_DIR:-/tmp/gatehouse-demo}
BIN=$PWD/.venv/bin
export GATE_HOME=$DEMO/gate

down() {
  if [ -f "$DEMO/gatehouse.pid" ]; then
    kill "$(cat "$DEMO/gatehouse.pid")" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$(cat "$DEMO/gatehouse.pid" 2>/dev/null)" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -rf "$DEMO"
  echo "demo stopped and its state removed"
}

up() {
  [ -f "$DEMO/gatehouse.pid" ] && kill -0 "$(cat "$DEMO/gatehouse.pid")" 2>/dev/null && down
  mkdir -p "$DEMO"
  cat > "$DEMO/gatehouse.yaml" <<YAML
gatehouse:
  nodename: demo-node
  data_dir: $DEMO/data
  log: {output: $DEMO/gatehouse.log, severity: INFO}
auth_service: {enabled: true, cluster_name: demo.gatehouse, listen_addr: 127.0.0.1:3025}
proxy_service: {enabled: true, web_listen_addr: 127.0.0.1:3080, listen_addr: 127.0.0.1:3023, tunnel_listen_addr: 127.0.0.1:3024}
ssh_service: {enabled: true, listen_addr: 127.0.0.1:3022, labels: {env: demo}}
YAML
  id visitor >/dev/null 2>&1 || { [ "$(id -u)" = 0 ] && useradd --create-home visitor; } || true
  login=$(id visitor >/dev/null 2>&1 && echo visitor || id -un)
  # Detached from this terminal; its log goes to the file named in the config.
  setsid "$BIN/gatehouse" start -c "$DEMO/gatehouse.yaml" --pid-file "$DEMO/gatehouse.pid" </dev/null >"$DEMO/gatehouse.out" 2>&1 &
  for _ in $(seq 100); do curl -sk https://127.0.0.1:3080/webapi/ping >/dev/null 2>&1 && break; sleep 0.1; done
  password=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "\$ gatectl users add alice --roles=access --logins=$login --password-stdin"
  echo "$password" | "$BIN/gatectl" -c "$DEMO/gatehouse.yaml" users add alice --roles=access --logins="$login" --password-stdin
  echo "\$ gate login --proxy=127.0.0.1:3080 --user=alice --insecure"
  echo "$password" | "$BIN/gate" login --proxy=127.0.0.1:3080 --user=alice --insecure --password-stdin
  echo "\$ gate ls"; "$BIN/gate" ls
  echo "\$ gate ssh $login@demo-node uname -a"; "$BIN/gate" ssh "$login@demo-node" uname -a
  cat <<MSG

The cluster keeps running in the background (log: $DEMO/gatehouse.log).
Try:   GATE_HOME=$GATE_HOME $BIN/gate ssh $login@demo-node
Stop:  make demo-down
MSG
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
