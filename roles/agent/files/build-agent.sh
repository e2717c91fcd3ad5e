#!/usr/bin/env bash
# build-agent.sh SOURCE_DIR BUILD_DIR PYTHON OFFLINE(true|false)
# Runs on the Ansible controller. Hashes the agent source; when BUILD_DIR/<hash>/dist does
# not exist yet, builds the wheel there (from a copy, so the source tree stays clean), and
# with OFFLINE=true also collects the dependency wheels in BUILD_DIR/<hash>/wheelhouse.
# Prints "hash=<hash>" and, when it built something, "built=<what>".
set -euo pipefail
src=$1 build=$2 python=$3 offline=$4

hash=$(cd "$src" && find pyproject.toml src -type f ! -name '*.pyc' ! -path '*/__pycache__/*' \
         ! -path '*.egg-info/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
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
fi
if [[ $offline == true && ! -d $out/wheelhouse ]]; then
  rm -rf "$out/wheelhouse.tmp"
  pip_wheel --wheel-dir "$out/wheelhouse.tmp" "$out"/dist/*.whl >&2
  mv "$out/wheelhouse.tmp" "$out/wheelhouse"
  echo "built=wheelhouse"
fi
