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
# Node.js runs the test OpenID provider (tests/oidc, the npm package oidc-provider). Machines
# of this project's kind come with Node.js 20; a bare Debian gets its own nodejs and npm.
command -v node >/dev/null 2>&1 || need_pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || need_pkgs+=(npm)
# The storage tests start their own throwaway PostgreSQL server (initdb/pg_ctl) and
# never use the package's system cluster.
new_postgresql=
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || { need_pkgs+=(postgresql); new_postgresql=1; }
command -v sudo >/dev/null 2>&1 || need_pkgs+=(sudo)         # molecule: node1 logs in unprivileged and becomes root
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing OS packages: ${need_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
    if [ -n "$new_postgresql" ] && command -v pg_lsclusters >/dev/null 2>&1; then
      # Without a policy-rc.d the package starts its "main" cluster; nothing needs it.
      pg_lsclusters --no-header | awk '$4 == "online" {print $1, $2}' | while read -r ver name; do
        pg_ctlcluster "$ver" "$name" stop || true
      done
    fi
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

# The test OpenID provider's npm packages, exactly as tests/oidc/package-lock.json pins them, go
# to .venv/oidc-fixture/node_modules: out of the source tree, which scripts/test-collection.sh
# copies for ansible-test sanity (it lints every file) and galaxy builds into the collection.
# npm ci runs again only when the lock file changed.
fixture=.venv/oidc-fixture
if ! cmp -s tests/oidc/package-lock.json "$fixture/package-lock.json" || [ ! -f "$fixture/node_modules/.package-lock.json" ]; then
  if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 18) ? 0 : 1)'; then
    echo "warning: node $(node --version) is too old for tests/oidc (oidc-provider 9 needs Node.js >= 20.18)" >&2
  fi
  echo "==> installing the test OpenID provider's npm packages (tests/oidc) into $fixture"
  mkdir -p "$fixture"
  cp tests/oidc/package.json tests/oidc/package-lock.json "$fixture/"
  (cd "$fixture" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

# The collection's changelog (scripts/changelog.sh, scripts/build-collection.sh) is made with antsibull-changelog.
if [ ! -x .venv/bin/antsibull-changelog ]; then
  echo "==> installing antsibull-changelog into .venv"
  .venv/bin/pip install -q 'antsibull-changelog>=0.26,<1' 'ansible-core>=2.17,<2.20'
fi
