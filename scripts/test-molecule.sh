#!/usr/bin/env bash
# The molecule scenario (extensions/molecule/default): root, leaf behind a firewall and a
# leaf node on network-namespace test hosts; converge with playbooks/site.yml, idempotence,
# what users see (verify), the trust life cycle (side_effect), destroy. Needs root (network
# namespaces, iptables). Exits non-zero when any step fails.
#   scripts/test-molecule.sh [extra molecule test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "test-molecule: needs root for network namespaces (tests/netns/testnet.sh)" >&2
  exit 1
fi
# shellcheck source=scripts/ansible-env.sh
source scripts/ansible-env.sh
gatehouse_pip_tool molecule 'molecule>=25,<27'
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || { echo "test-molecule: sshd is missing (make deps)" >&2; exit 1; }
# testnet.sh's sshd (UsePAM no) refuses key logins to a locked root account ("!" in
# /etc/shadow). For the run, the field becomes "*" (still no password login); it is put
# back at exit.
root_pw_field=$(awk -F: '$1 == "root" {print $2}' /etc/shadow)
if [[ $root_pw_field == '!'* ]]; then
  echo "test-molecule: root's password is locked; allowing key logins for this run"
  usermod -p '*' root
  trap 'usermod -p "$root_pw_field" root' EXIT
fi
# One user of the scenario's test hosts at a time (bench/bench_site.py takes the same lock).
exec 8>/run/lock/gatehouse-molecule.lock
flock -w 1200 8 || { echo "test-molecule: another run holds /run/lock/gatehouse-molecule.lock" >&2; exit 1; }
echo "==> molecule test (extensions/molecule/default)"
start=$SECONDS
rc=0
timeout --foreground 1200 molecule test --scenario-name default "$@" || rc=$?
echo "==> molecule: $([ $rc = 0 ] && echo passed || echo "FAILED (exit $rc)") in $((SECONDS - start))s"
exit $rc
