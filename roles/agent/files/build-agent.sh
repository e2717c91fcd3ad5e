#!/usr/bin/env bash
# build-agent.sh SOURCE_DIR BUILD_DIR PYTHON OFFLINE(true|false)
# build-agent.sh --hash SOURCE_DIR        (print the source hash only)
# Runs on the Ansible controller. Hashes the agent source; when BUILD_DIR/<hash>/dist does
# not exist yet, builds the wheel there (from a copy, so the source tree stays clean), and
# with OFFLINE=true also collects the dependency wheels in BUILD_DIR/<hash>/wheelhouse.tar.
# Prints "hash=<hash>" and, when it built something, "built=<what>".
set -euo pipefail
source_hash() {
  (cd "$1" && find pyproject.toml src -type f ! -name '*.pyc' ! -path '*/__pycache__/*' \
     ! -path '*.egg-info/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
}
if [[ $1 == --hash ]]; then source_hash "$2"; exit 0; fi
src=$1 build=$2 python=$3 offline=$4
hash=$(source_hash "$src")
out=$build/$hash
echo "hash=$hash"
pip_wheel() { "$python" -m pip wheel --quiet --disable-pip-version-check "$@"; }

if [[ ! -d $out/dist ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  cp -r "$src/pyproject.toml" "$src/src" "$tmp/"
  rm -rf "$tmp"/src/*.egg-info "$out/dist.tmp"
  pip_wheel --no-deps --wheel-dir "$out/dist.tmp" "$tmp" >&2
  mv "$out/dist.tmp" "$out/dist"
  echo "built=wheel"
  # Keep the three newest builds.
  find "$build" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' | sort -rn | tail -n +4 | cut -d' ' -f2- \
    | xargs -r rm -rf
fi
# One archive, copied to targets as a single file.
if [[ $offline == true && ! -f $out/wheelhouse.tar ]]; then
  rm -rf "$out/wheelhouse.tmp"
  pip_wheel --wheel-dir "$out/wheelhouse.tmp" "$out"/dist/*.whl >&2
  tar -C "$out/wheelhouse.tmp" -cf "$out/wheelhouse.tar.tmp" .
  rm -rf "$out/wheelhouse.tmp"
  mv "$out/wheelhouse.tar.tmp" "$out/wheelhouse.tar"
  echo "built=wheelhouse"
fi
