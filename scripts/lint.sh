#!/usr/bin/env bash
# ansible-lint (production profile, .ansible-lint) on the collection's roles, playbooks and
# molecule scenarios. Installs ansible-lint into .venv when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/ansible-env.sh
source scripts/ansible-env.sh
gatehouse_pip_tool ansiblelint 'ansible-lint>=25,<27'
# Without ANSIBLE_* paths ansible-lint works "isolated" in .ansible/ and finds the collection
# through the symlink there; with them it would install a copy into ~/.ansible.
unset ANSIBLE_COLLECTIONS_PATH
echo "==> ansible-lint (production profile)"
exec ansible-lint --nocolor roles playbooks extensions/molecule "$@"
