# shellcheck shell=bash
# Sourced by scripts/site-demo.sh, test-molecule.sh, lint.sh and bench/bench_site.py's
# callers: makes sure .venv exists with the agent and ansible-core, and exposes this checkout
# as the collection gatehouse.clusters (a symlink under .ansible/collections, the place
# ansible-lint also uses), so playbooks and roles run from the working tree.
GATEHOUSE_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$GATEHOUSE_REPO/scripts/install-deps.sh"
if ! "$GATEHOUSE_REPO/.venv/bin/python" -c 'import sys, ansible.release as r; v = tuple(map(int, r.__version__.split(".")[:2])); sys.exit(not (2, 17) <= v < (2, 20))' 2>/dev/null; then
  echo "==> installing ansible-core into .venv"
  "$GATEHOUSE_REPO/.venv/bin/pip" install -q 'ansible-core>=2.17,<2.20'
fi
# gatehouse_pip_tool MODULE SPEC: install a tool into .venv when it is missing.
gatehouse_pip_tool() {
  "$GATEHOUSE_REPO/.venv/bin/python" -c "import $1" 2>/dev/null && return 0
  echo "==> installing $2 into .venv"
  "$GATEHOUSE_REPO/.venv/bin/pip" install -q "$2"
}
mkdir -p "$GATEHOUSE_REPO/.ansible/collections/ansible_collections/gatehouse"
ln -sfn ../../../.. "$GATEHOUSE_REPO/.ansible/collections/ansible_collections/gatehouse/clusters"
export ANSIBLE_COLLECTIONS_PATH=$GATEHOUSE_REPO/.ansible/collections
export PATH=$GATEHOUSE_REPO/.venv/bin:$PATH
