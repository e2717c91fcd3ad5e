#!/usr/bin/env bash
# Install what Gatehouse needs on a fresh Debian machine: OS packages (when root and
# missing) and a virtualenv at .venv with the agent and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need_pkgs+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need_pkgs+=(openssh-client)
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v iptables >/dev/null 2>&1 || need_pkgs+=(iptables)
command -v nsenter >/dev/null 2>&1 || need_pkgs+=(util-linux)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)   # collection unit tests make test certificates
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need_pkgs+=(haproxy)
command -v sudo >/dev/null 2>&1 || need_pkgs+=(sudo)         # molecule: node1 logs in unprivileged and becomes root
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing OS packages: ${need_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    echo "missing OS packages: ${need_pkgs[*]}; install them (e.g. sudo apt-get install ${need_pkgs[*]})" >&2
    exit 1
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ agent/pyproject.toml -nt .venv/.installed ]; then
  echo "==> installing the agent and test tools into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e 'agent[test]'
  touch .venv/.installed
fi
# The Ansible collection's tests (scripts/test-collection.sh) need ansible-core (with ansible-test)
# in .venv; ansible-test then builds its own virtualenvs for sanity and units from PyPI.
if ! .venv/bin/python -c 'import sys, ansible.release as r; v = tuple(map(int, r.__version__.split(".")[:2])); sys.exit(not (2, 17) <= v < (2, 20))' 2>/dev/null; then
  echo "==> installing ansible-core into .venv"
  .venv/bin/pip install -q 'ansible-core>=2.17,<2.20'
fi
# The collection's changelog (scripts/changelog.sh, scripts/build-collection.sh) is made with antsibull-changelog.
if [ ! -x .venv/bin/antsibull-changelog ]; then
  echo "==> installing antsibull-changelog into .venv"
  .venv/bin/pip install -q 'antsibull-changelog>=0.26,<1' 'ansible-core>=2.17,<2.20'
fi
