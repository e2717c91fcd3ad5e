#!/usr/bin/env bash
# The molecule scenarios, one after the other, on network-namespace test hosts. Needs root
# (network namespaces, iptables).
#  default  root, leaf behind a firewall and a leaf node (reached as an unprivileged user with
#           sudo); check mode on the fresh hosts, converge with playbooks/site.yml, idempotence,
#           verify (check mode changes nothing, what users see, the leaf's firewall), the trust
#           life cycle and the access role's failures (side_effect), destroy.
#  ha       a highly available root (PostgreSQL, two auth servers, two proxies, haproxy), a
#           leaf behind a firewall and its node; check mode on the fresh hosts, converge,
#           idempotence, verify (one auth server, then one proxy killed mid-session), destroy.
#
# Each run is at -vvv with diffs, written to a log; the console shows its task lines.
# Afterwards the secret-leak check looks in that log for every secret the scenario used or
# made (passwords, a static token, node join and trusted_cluster tokens: the scenario
# records them, see extensions/molecule/*/record_secrets.yml) and fails if any shows.
# Exits non-zero when any step fails.
#   scripts/test-molecule.sh [extra molecule test arguments]
#   GATEHOUSE_MOLECULE_SCENARIOS=ha scripts/test-molecule.sh     (only these scenarios)
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
command -v sudo >/dev/null 2>&1 || { echo "test-molecule: sudo is missing (make deps); node1 becomes root with it" >&2; exit 1; }
# testnet.sh's sshd (UsePAM no) refuses key logins to a locked root account ("!" in
# /etc/shadow). For the run, the field becomes "*" (still no password login); it is put
# back at exit.
root_pw_field=$(awk -F: '$1 == "root" {print $2}' /etc/shadow)
work="" keep_work=""
cleanup() {
  local rc=$?
  if [[ $root_pw_field == '!'* ]]; then usermod -p "$root_pw_field" root; fi
  if [ -n "$work" ] && [ -z "$keep_work" ]; then rm -rf "$work"; fi
  exit $rc
}
trap cleanup EXIT
if [[ $root_pw_field == '!'* ]]; then
  echo "test-molecule: root's password is locked; allowing key logins for this run"
  usermod -p '*' root
fi
# One user of the scenario's test hosts at a time (bench/bench_site.py takes the same lock).
exec 8>/run/lock/gatehouse-molecule.lock
flock -w 1200 8 || { echo "test-molecule: another run holds /run/lock/gatehouse-molecule.lock" >&2; exit 1; }
work=$(mktemp -d /tmp/gatehouse-molecule-run.XXXXXX)
chmod 700 "$work"
export ANSIBLE_VERBOSITY=3
export COLUMNS=400   # fewer wrapped lines in the log
# The kinds of secret each scenario must record (at least this many of each), or the leak
# check would prove nothing.
declare -A secret_kinds=(
  [default]='{"password": 3, "static-token": 1, "join-token": 1, "trust-token": 2}'
  [ha]='{"password": 2, "join-token": 3, "trust-token": 1}'
)
rc=0 passed=0 failed=0
# run_scenario NAME [molecule test arguments]: the scenario, then its secret-leak check;
# sets rc to non-zero when either fails.
run_scenario() {
  local scenario=$1 log scenario_rc leak_rc need
  shift
  need=${secret_kinds[$scenario]:?"test-molecule: no secret kinds listed for scenario $scenario"}
  log=$work/$scenario.log
  export GATEHOUSE_MOLECULE_SECRETS=$work/secrets-$scenario
  mkdir "$GATEHOUSE_MOLECULE_SECRETS"
  echo "==> molecule test (extensions/molecule/$scenario), at -vvv into $log"
  start=$SECONDS
  set +o pipefail
  # The console gets the task, play, recap and failure lines, each with the seconds since start.
  timeout --foreground 1200 molecule test --scenario-name "$scenario" "$@" 2>&1 | tee "$log" \
    | "$GATEHOUSE_REPO/.venv/bin/python" -u -c '
import re, sys, time
start = time.monotonic()
keep = re.compile(r"TASK \[|PLAY \[|RUNNING HANDLER \[|PLAY RECAP|: ok=[0-9]|fatal:|FAILED!|ERROR|➜")
for line in sys.stdin:
    if keep.search(line):
        sys.stdout.write("[%4ds] %s" % (time.monotonic() - start, line))
'
  scenario_rc=${PIPESTATUS[0]}
  set -o pipefail
  echo "==> molecule $scenario: $([ $scenario_rc = 0 ] && echo passed || echo "FAILED (exit $scenario_rc)") in $((SECONDS - start))s"
  if [ $scenario_rc != 0 ]; then
    echo "---- the last 150 lines of the log" >&2
    tail -n 150 "$log" >&2
  fi

  # The secret-leak check. It needs every kind of secret recorded, or it would prove nothing.
  leak_rc=0
  "$GATEHOUSE_REPO/.venv/bin/python" - "$log" "$GATEHOUSE_MOLECULE_SECRETS" "$need" <<'PY' || leak_rc=$?
import json
import os
import re
import sys
log_path, secrets_path, need = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with open(log_path, encoding="utf-8", errors="replace") as fh:
    lines = fh.read().splitlines()
text = "\n".join(lines)
# Molecule frames and may wrap long lines: also search the output with colours, frames and
# all white space removed, so a secret split over two lines is found too.
squashed = re.sub(r"\s|│", "", re.sub(r"\x1b\[[0-9;]*m", "", text))
secrets = set()
for name in os.listdir(secrets_path):
    with open(os.path.join(secrets_path, name), encoding="utf-8") as fh:
        secrets.update(tuple(line.split()) for line in fh if len(line.split()) == 2)
secrets = sorted(secrets)
have = {}
for kind, value in secrets:
    have[kind] = have.get(kind, 0) + 1
missing = [f"{kind} (recorded {have.get(kind, 0)}, need {n})" for kind, n in need.items() if have.get(kind, 0) < n]
if missing:
    print(f"secret-leak check: the scenario did not record enough secrets to check: {', '.join(missing)}")
    sys.exit(1)
leaks = []
for kind, value in secrets:
    if len(value) < 12:
        print(f"secret-leak check: a recorded {kind} is only {len(value)} characters long; too short to search for")
        sys.exit(1)
    if value in text:
        first = next(i for i, line in enumerate(lines, 1) if value in line)
        leaks.append(f"a {kind} appears {text.count(value)} time(s), first on line {first}")
    elif value in squashed:
        leaks.append(f"a {kind} appears {squashed.count(value)} time(s), split over lines")
if leaks:
    print(f"secret-leak check: FAILED: {'; '.join(leaks)} of {log_path}")
    sys.exit(1)
print(f"secret-leak check: none of {len(secrets)} secrets ({', '.join(f'{n} {k}' for k, n in sorted(have.items()))}) "
      f"appears in the {len(lines)} lines of -vvv output")
PY
  if [ $scenario_rc != 0 ] || [ $leak_rc != 0 ]; then
    keep_work=1
    rc=1
    failed=$((failed + 1))
  else
    passed=$((passed + 1))
  fi
}
for scenario in ${GATEHOUSE_MOLECULE_SCENARIOS:-default ha}; do
  run_scenario "$scenario" "$@"
done
if [ $rc != 0 ]; then
  echo "test-molecule: the logs (and the secrets they were checked for) stay in $work" >&2
fi
echo "molecule: $passed passed, $failed failed"
exit $rc
