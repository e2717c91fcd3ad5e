#!/usr/bin/env bash
# Generate the changelog of gatehouse.clusters with antsibull-changelog: the fragments in
# changelogs/fragments/ go into changelogs/changelog.yaml under the version in galaxy.yml
# (added to that release while it is not out), then CHANGELOG.rst and CHANGELOG.md are
# written from it. Lints the fragments first.
#   scripts/changelog.sh [DIR]    (DIR: a copy of the collection to work on; default: this checkout)
# scripts/build-collection.sh runs it on its staging copy, so every artifact carries the
# changelog of all fragments without touching the checkout.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(cd "${1:-$REPO}" && pwd)
if [ ! -x "$REPO/.venv/bin/antsibull-changelog" ]; then
  echo "changelog: antsibull-changelog is not in $REPO/.venv; run scripts/install-deps.sh first" >&2
  exit 1
fi
# antsibull-changelog asks ansible-doc for the collection's plugins.
export PATH="$REPO/.venv/bin:$PATH"
version=$("$REPO/.venv/bin/python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["version"])' "$DIR/galaxy.yml")
cd "$DIR"
antsibull-changelog lint
antsibull-changelog release --version "$version" --update-existing
echo "changelog: CHANGELOG.rst and CHANGELOG.md for $version in $DIR"
