#!/usr/bin/env bash
# playbooks/upgrade.yml on the molecule scenario's test hosts, with a real version bump:
#   1. converge (site.yml) at the checkout's agent version V;
#   2. upgrade.yml with the same agent changes nothing and verifies every host;
#   3. upgrade.yml --check --diff with agent V+1 (a copy of agent/ with the major bumped)
#      fails nothing;
#   4. upgrade.yml with agent V+1: root, its nodes, the leaf, its nodes, one at a time,
#      each verified (new version, leaves online again), while a user's session through
#      the root proxy, the leaf's tunnel and the leaf's node runs across all of it (each
#      agent reloads, none restarts) and `gate clusters` shows the leaf online every second;
#      then a new session reaches the leaf's node through the root;
#   5. agent V+3 is refused (the leaf would fall more than one major version behind), and
#      so is going back to V (no downgrade), both before anything changes.
# Part of `make test`, after the molecule scenario (about five minutes; the bumped wheel's
# cold build may fetch its build backend and the dependency wheels from the package
# registry). Needs root. Alone:
#   flock /tmp/gatehouse-netns.lock scripts/test-upgrade.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "test-upgrade: needs root for network namespaces (tests/netns/testnet.sh)" >&2
  exit 1
fi
# shellcheck source=scripts/ansible-env.sh
source scripts/ansible-env.sh
gatehouse_pip_tool molecule 'molecule>=25,<27'
exec 8>/run/lock/gatehouse-molecule.lock
flock -w 1200 8 || { echo "test-upgrade: another run holds /run/lock/gatehouse-molecule.lock" >&2; exit 1; }
work=$(mktemp -d /tmp/gatehouse-upgrade.XXXXXX)
cleanup() {
  local rc=$?
  molecule destroy >/dev/null 2>&1 || true
  if [ $rc = 0 ]; then rm -rf "$work"; else echo "test-upgrade: logs are in $work" >&2; fi
  exit $rc
}
trap cleanup EXIT
export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0

version=$(sed -n 's/^version = "\([0-9][0-9.]*\)"$/\1/p' agent/pyproject.toml)
major=${version%%.*}
bump() {  # bump NEW_MAJOR: a copy of the agent source at NEW_MAJOR.0.0
  local dir=$work/agent-$1
  mkdir -p "$dir"
  cp -r agent/pyproject.toml agent/src "$dir/"
  find "$dir" -name __pycache__ -prune -exec rm -rf {} +
  sed -i "s/^version = \"$version\"/version = \"$1.0.0\"/" "$dir/pyproject.toml"
  sed -i "s/^__version__ = \"$version\"/__version__ = \"$1.0.0\"/" "$dir/src/gatehouse/__init__.py"
  echo "$dir"
}
next=$(bump $((major + 1)))
far=$(bump $((major + 3)))

failed=0
step() {  # step NAME EXPECT(ok|fail) [ansible-playbook args]: run, and say whether it did what it should
  local name=$1 expect=$2 rc=0 start=$SECONDS
  shift 2
  ansible-playbook -i "$inventory" "$@" >"$work/$name.log" 2>&1 || rc=$?
  local recap
  recap=$(grep -E '^[a-z0-9_]+ +: ok=' "$work/$name.log" | awk '{print $1, $4, $6}' | tr '\n' ' ')
  if { [ "$expect" = ok ] && [ $rc = 0 ]; } || { [ "$expect" = fail ] && [ $rc != 0 ]; }; then
    echo "PASS $name ($((SECONDS - start))s) $recap"
  else
    echo "FAIL $name (exit $rc, expected $expect) $recap"
    tail -n 40 "$work/$name.log"
    failed=$((failed + 1))
  fi
}

echo "==> test hosts and site.yml at agent $version"
# The scenario's state (SSH key, passwords, ansible.cfg) in a directory of this run, not
# whichever molecule.*.default another checkout left in ~/.ansible/tmp.
ephemeral=$work/ephemeral
export MOLECULE_EPHEMERAL_DIRECTORY=$ephemeral
molecule destroy >/dev/null 2>&1 || true
molecule create >"$work/create.log" 2>&1
molecule converge >"$work/converge.log" 2>&1
export ANSIBLE_CONFIG=$ephemeral/ansible.cfg
inventory=extensions/molecule/default/inventory/

step same-version ok playbooks/upgrade.yml
if grep -qE 'changed=[1-9]' "$work/same-version.log"; then echo "FAIL same-version changed something"; failed=$((failed + 1)); fi
step check-$((major + 1)) ok --check --diff playbooks/upgrade.yml -e "agent_source_dir=$next"

# Across the real upgrade, as a user sees it (with the checkout's gate, not one the upgrade
# replaces): a session through the root proxy, the leaf's tunnel and the leaf's node runs
# from before the root's upgrade to after the node's (every agent on its way reloads, none
# restarts), and `gate clusters`, asked every second, shows the leaf online every time.
gate=$GATEHOUSE_REPO/.venv/bin/gate
export GATE_HOME=$work/gate
"$gate" login --proxy=198.18.0.10:3080 --user=alice --insecure --password-stdin <"$ephemeral/alice.password" >/dev/null
marker=/tmp/gatehouse-upgrade-session.$$
rm -f "$marker".*
"$gate" ssh --cluster=leaf.test visitor@node1 "echo started \$PPID; i=0; \
  while [ ! -e $marker.done ] && [ \$i -lt 3000 ]; do sleep 0.2; i=\$((i + 1)); done; echo ended \$PPID" \
  >"$work/session.out" 2>&1 </dev/null &
session=$!
for _ in $(seq 100); do grep -q '^started' "$work/session.out" && break; sleep 0.2; done
( while :; do
    if out=$("$gate" clusters 2>&1); then grep -E '^leaf\.test ' <<<"$out" || echo "leaf.test missing"
    else echo "gate clusters failed: ${out//$'\n'/ }"; fi
    sleep 1
  done ) >"$work/online.log" 2>&1 &
sampler=$!
step upgrade-$((major + 1)) ok playbooks/upgrade.yml -e "agent_source_dir=$next"
kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
touch "$marker.done"
session_rc=0; wait "$session" || session_rc=$?
rm -f "$marker".*
started=$(sed -n 's/^started //p' "$work/session.out")
if [ $session_rc = 0 ] && [ -n "$started" ] && [ "$(sed -n 's/^ended //p' "$work/session.out")" = "$started" ]; then
  echo "PASS a session through the root to the leaf's node ran across the upgrade (node agent pid $started)"
else
  echo "FAIL the session across the upgrade ended with $session_rc: $(tr '\n' ' ' <"$work/session.out")"
  failed=$((failed + 1))
fi
samples=$(grep -c . "$work/online.log" || true)
if [ "$samples" -ge 5 ] && ! grep -Ev '^leaf\.test +online ' "$work/online.log" >/dev/null; then
  echo "PASS the leaf was online at all $samples samples during the upgrade"
else
  echo "FAIL the leaf was not online throughout the upgrade ($samples samples): $(grep -Ev '^leaf\.test +online ' "$work/online.log" | sort | uniq -c | tr '\n' ' ')"
  failed=$((failed + 1))
fi
if [ "$("$gate" ssh --cluster=leaf.test visitor@node1 uname -n)" = mol-node1 ]; then
  echo "PASS a user reaches the leaf's node through the root after the upgrade"
else
  echo "FAIL a user no longer reaches the leaf's node through the root"; failed=$((failed + 1))
fi
step refuse-$((major + 3)) fail playbooks/upgrade.yml -e "agent_source_dir=$far"
grep -q "upgrade every leaf to at least" "$work/refuse-$((major + 3)).log" \
  || { echo "FAIL refuse-$((major + 3)) did not say why"; failed=$((failed + 1)); }
step refuse-downgrade fail playbooks/upgrade.yml
grep -q "this playbook does not downgrade" "$work/refuse-downgrade.log" \
  || { echo "FAIL refuse-downgrade did not say why"; failed=$((failed + 1)); }
grep -qE 'changed=[1-9]' "$work/refuse-$((major + 3)).log" "$work/refuse-downgrade.log" \
  && { echo "FAIL a refused upgrade changed something"; failed=$((failed + 1)); }
echo "upgrade: $([ $failed = 0 ] && echo 1 || echo 0) passed, $failed failed"
[ $failed = 0 ]
