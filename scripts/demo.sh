#!/usr/bin/env bash
# `make demo`: playbooks/site.yml on the local inventory stands up a root cluster,
# a leaf cluster and a leaf node on this machine (ports 30xx, 31xx, 3222; everything under
# /tmp/gatehouse-site), with trust from the leaf to the root. Then, as a user would:
# log in at the root, list the clusters, run `uname -a` on the leaf's node through the root
# proxy and the leaf's reverse tunnel.
#   scripts/demo.sh up      (default; `make demo`)
#   scripts/demo.sh down    stop the three agents and remove their state (`make demo-down`)
# Needs root (the node switches to the login's Unix account; the role creates `visitor`).
set -euo pipefail
cd "$(dirname "$0")/.."
export GATEHOUSE_SITE_DIR=${GATEHOUSE_SITE_DIR:-/tmp/gatehouse-site}
SITE=$GATEHOUSE_SITE_DIR
INVENTORY=playbooks/inventories/local
PORTS=(3025 3080 3023 3024 3125 3180 3123 3124 3222)
HOSTS=(node1 leaf root)

down() {
  local h
  for h in "${HOSTS[@]}"; do
    if [ -x "$SITE/$h/bin/gatehouse-service" ]; then "$SITE/$h/bin/gatehouse-service" stop; fi
  done
  rm -rf "$SITE"
  echo "site demo stopped and its state ($SITE) removed"
}

# Every port must be free or held by this demo's own agents.
check_ports() {
  local h p pid holder ours=() busy=()
  for h in "${HOSTS[@]}"; do
    pid=$(cat "/run/gatehouse/gatehouse-$h.pid" 2>/dev/null) && ours+=("pid=$pid,")
  done
  for p in "${PORTS[@]}"; do
    holder=$(ss -Hltnp "sport = :$p" 2>/dev/null) || continue
    [ -n "$holder" ] || continue
    for pid in "${ours[@]}"; do [[ $holder == *"$pid"* ]] && continue 2; done
    busy+=("$p")
  done
  if [ ${#busy[@]} -gt 0 ]; then
    echo "demo: ports ${busy[*]} are in use by other programs; the demo needs ${PORTS[*]} on 127.0.0.1" >&2
    exit 1
  fi
}

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

up() {
  if [ "$(id -u)" != 0 ]; then
    echo "demo: run it as root (the node runs sessions as other Unix users)" >&2
    exit 1
  fi
  # shellcheck source=scripts/ansible-env.sh
  source scripts/ansible-env.sh
  check_ports
  say "ansible-playbook -i $INVENTORY playbooks/site.yml"
  ANSIBLE_DISPLAY_SKIPPED_HOSTS=false ansible-playbook -i "$INVENTORY" playbooks/site.yml

  export GATE_HOME=$SITE/gate
  local gate=$SITE/root/venv/bin/gate
  say "gate login --proxy=127.0.0.1:3080 --user=alice --insecure"
  "$gate" login --proxy=127.0.0.1:3080 --user=alice --insecure --password-stdin <"$SITE/passwords/alice"
  say "gate clusters"
  local i
  for i in $(seq 20); do
    "$gate" clusters | grep -Eq '^leaf\.demo +online' && break
    sleep 0.5
  done
  "$gate" clusters
  say "gate ls --cluster=leaf.demo"
  "$gate" ls --cluster=leaf.demo
  say "gate ssh --cluster=leaf.demo visitor@node1 uname -a"
  "$gate" ssh --cluster=leaf.demo visitor@node1 uname -a
  cat <<MSG

Three agents run in the background (root: auth + proxy on 3025/3080/3023/3024; leaf: auth +
proxy on 3125/3180/3123, tunnel to the root; node1 of the leaf on 3222). Their logs are
in $SITE/*/data/log/. Try:

  export GATE_HOME=$GATE_HOME ANSIBLE_COLLECTIONS_PATH=$ANSIBLE_COLLECTIONS_PATH PATH=$PWD/.venv/bin:\$PATH
  gate ssh --cluster=leaf.demo visitor@node1                    # a shell on the leaf's node
  gate status                                              # your roles, and what they map to on the leaf
  ansible-playbook -i $INVENTORY playbooks/site.yml        # again: changes nothing
  ansible-playbook -i $INVENTORY playbooks/trust_disable.yml   # then trust_enable.yml, trust_remove.yml
  (bob's role is not mapped by the leaf: log in as bob with $SITE/passwords/bob to see the denial)

Stop it: make demo-down
MSG
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
