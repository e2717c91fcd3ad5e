# shellcheck shell=bash
# Sourced by scripts/demo.sh, test-molecule.sh, lint.sh and bench/bench_site.py's
# callers: makes sure .venv exists with the agent and ansible-core, and exposes this checkout
# as the collection gatehouse.clusters (a symlink under .ansible/collections, the place
# ansible-lint also uses), so playbooks and roles run from the working tree.
GATEHOUSE_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$GATEHOUSE_REPO/scripts/install-deps.sh"   # .venv with the agent and ansible-core
# gatehouse_pip_tool MODULE SPEC: install a tool into .venv when it is missing, keeping
# the ansible-core that install-deps.sh pinned.
gatehouse_pip_tool() {
  "$GATEHOUSE_REPO/.venv/bin/python" -c "import $1" 2>/dev/null && return 0
  echo "==> installing $2 into .venv"
  "$GATEHOUSE_REPO/.venv/bin/pip" install -q "$2" 'ansible-core>=2.17,<2.20'
}
mkdir -p "$GATEHOUSE_REPO/.ansible/collections/ansible_collections/gatehouse"
ln -sfn ../../../.. "$GATEHOUSE_REPO/.ansible/collections/ansible_collections/gatehouse/clusters"
export ANSIBLE_COLLECTIONS_PATH=$GATEHOUSE_REPO/.ansible/collections
export PATH=$GATEHOUSE_REPO/.venv/bin:$PATH
