#!/usr/bin/env bash
# Test the Ansible collection gatehouse.clusters as users get it: build the artifact
# (scripts/build-collection.sh: ansible-galaxy collection build, changelog included),
# install it with ansible-galaxy into ansible_collections/gatehouse/clusters/ (where
# ansible-test runs), then in that installed copy:
#   1. ansible-test sanity  (no ignore file)
#   2. ansible-test units
#   3. integration: every module against real agents started on loopback
#      (the installed tests/integration/run.py drives ansible-playbook over its targets)
#
# Usage: scripts/test-collection.sh [sanity] [units] [integration]   (default: all three)
# Env:   GATEHOUSE_COLLECTION_ROOT  where to put dist/ and ansible_collections/ (default: a temporary
#                                   directory, removed at exit; a given directory is kept for inspection)
#        TARGETS="role user"         integration targets to run (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
if [ ! -x "$VENV/bin/ansible-test" ]; then
  echo "ansible-test is not in $VENV; run scripts/install-deps.sh first" >&2
  exit 1
fi
export PATH="$VENV/bin:$PATH"
PY=3.11

# The artifact ships the agent's source (agent/src: the agent role builds the wheel from it),
# and ansible-test lints it like the rest: no ignore file, nothing left out.
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(sanity units integration)

if [ -n "${GATEHOUSE_COLLECTION_ROOT:-}" ]; then
  COLL_ROOT=$GATEHOUSE_COLLECTION_ROOT
  mkdir -p "$COLL_ROOT"
else
  COLL_ROOT=$(mktemp -d /tmp/gatehouse-collection.XXXXXX)
  trap 'rm -rf "$COLL_ROOT"' EXIT
fi
DEST=$COLL_ROOT/ansible_collections/gatehouse/clusters

echo "==> building the collection artifact"
artifact=$("$ROOT/scripts/build-collection.sh" "$COLL_ROOT/dist" | tail -n 1)
echo "==> installing $(basename "$artifact") into $COLL_ROOT"
rm -rf "$DEST"
ansible-galaxy collection install --force --no-deps -p "$COLL_ROOT" "$artifact"

# ansible-test bootstraps pip in its virtual environments with a get-pip script it downloads
# from a host outside the package registries; use the interpreter's own ensurepip instead.
pip_version=$(grep -oE "pip='[0-9.]+'" "$("$VENV/bin/python" -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')/_internal/python_requirements.py" | head -1 | grep -oE "[0-9.]+" || true)
mkdir -p "$HOME/.ansible/test/cache"
for v in ${pip_version:-24.2}; do
  cache="$HOME/.ansible/test/cache/get_pip_${v//./_}.py"
  [ -f "$cache" ] || printf 'import ensurepip\nensurepip.bootstrap(upgrade=True)\n' > "$cache"
done

failed=()
passed=()
run_step() {
  local name=$1
  shift
  echo "==> $name"
  if "$@"; then
    passed+=("$name")
  else
    failed+=("$name")
    echo "!!! $name failed" >&2
  fi
}

for step in "${steps[@]}"; do
  case $step in
    sanity)
      run_step sanity bash -c "cd '$DEST' && ansible-test sanity --python $PY --venv --color no" ;;
    units)
      run_step units bash -c "cd '$DEST' && ansible-test units --python $PY --venv --color no" ;;
    integration)
      # The installed copy's own run.py and targets, against the installed collection.
      run_step integration "$VENV/bin/python" "$DEST/tests/integration/run.py" --collections "$COLL_ROOT" \
        ${TARGETS:+--targets $TARGETS} ;;
    *)
      echo "unknown step $step (use sanity, units, integration)" >&2
      exit 2 ;;
  esac
done

echo "==> collection tests passed: ${passed[*]:-none}${failed:+; failed: ${failed[*]}}"
echo "collection: ${#passed[@]} passed, ${#failed[@]} failed"
[ ${#failed[@]} -eq 0 ]
