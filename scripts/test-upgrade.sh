#!/usr/bin/env bash
# playbooks/upgrade.yml on the molecule scenario's test hosts, with a real version bump:
#   1. converge (site.yml) at the checkout's agent version V;
#   2. upgrade.yml with the same agent changes nothing and verifies every host;
#   3. upgrade.yml --check --diff with agent V+1 (a copy of agent/ with the major bumped)
#      fails nothing;
#   4. upgrade.yml with agent V+1: root, its nodes, the leaf, its nodes, one at a time,
#      each verified (new version, leaves online again); then a user still reaches the
#      leaf's node through the root;
#   5. agent V+3 is refused (the leaf would fall more than one major version behind), and
#      so is going back to V (no downgrade), both before anything changes.
# Not part of `make test` (about four minutes, and the bumped wheel's cold build may fetch
# its build backend and the dependency wheels from the package registry). Needs root.
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
molecule destroy >/dev/null 2>&1 || true
molecule create >"$work/create.log" 2>&1
molecule converge >"$work/converge.log" 2>&1
ephemeral=$(ls -d "$HOME"/.ansible/tmp/molecule.*.default | head -n 1)
export ANSIBLE_CONFIG=$ephemeral/ansible.cfg MOLECULE_EPHEMERAL_DIRECTORY=$ephemeral
inventory=extensions/molecule/default/inventory/

step same-version ok playbooks/upgrade.yml
if grep -qE 'changed=[1-9]' "$work/same-version.log"; then echo "FAIL same-version changed something"; failed=$((failed + 1)); fi
step check-$((major + 1)) ok --check --diff playbooks/upgrade.yml -e "agent_source_dir=$next"
step upgrade-$((major + 1)) ok playbooks/upgrade.yml -e "agent_source_dir=$next"
gate=/tmp/gatehouse-molecule/root1/opt/venv/bin/gate
if GATE_HOME=$work/gate "$gate" login --proxy=198.18.0.10:3080 --user=alice --insecure --password-stdin \
     <"$ephemeral/alice.password" >/dev/null 2>&1 \
   && [ "$(GATE_HOME=$work/gate "$gate" ssh --cluster=leaf visitor@node1 uname -n)" = mol-node1 ]; then
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
