#!/usr/bin/env bash
# Build the collection artifact gatehouse-clusters-VERSION.tar.gz with ansible-galaxy.
#
# The checkout is copied to a staging directory first (without .git, .venv and other local
# state); there the changelog is generated from changelogs/fragments (scripts/changelog.sh),
# so the artifact always carries CHANGELOG.rst/.md with every fragment and the checkout is
# left as it is. galaxy.yml's build_ignore decides what the artifact leaves out (the
# agent's tests, the checkout's scripts, bench/, the pytest multi-host tests).
#
#   scripts/build-collection.sh [OUTPUT_DIR]     (default: dist/; prints the artifact's path last)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$REPO/dist}
if [ ! -x "$REPO/.venv/bin/ansible-galaxy" ]; then
  echo "build-collection: ansible-galaxy is not in $REPO/.venv; run scripts/install-deps.sh first" >&2
  exit 1
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
stage=$(mktemp -d /tmp/gatehouse-build.XXXXXX)
trap 'rm -rf "$stage"' EXIT

# Local state never goes into the artifact; build_ignore covers the rest.
tar -C "$REPO" -cf - \
  --exclude=./.git --exclude=./.venv --exclude=./.ansible --exclude=./.pytest_cache --exclude=./.benchmarks \
  --exclude=./dist --exclude=./tests/output --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' . \
  | tar -C "$stage" -xf -

echo "==> changelog" >&2
"$REPO/scripts/changelog.sh" "$stage" >&2

echo "==> ansible-galaxy collection build" >&2
"$REPO/.venv/bin/ansible-galaxy" collection build --force --output-path "$OUT" "$stage" >&2
version=$("$REPO/.venv/bin/python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["version"])' "$stage/galaxy.yml")
artifact=$OUT/gatehouse-clusters-$version.tar.gz
[ -f "$artifact" ] || { echo "build-collection: ansible-galaxy did not write $artifact" >&2; exit 1; }
echo "$artifact"
