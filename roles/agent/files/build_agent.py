# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Build the Gatehouse agent wheel on the Ansible controller, once per source change.

    build_agent.py SOURCE_DIR BUILD_DIR OFFLINE      (OFFLINE: true or false)
    build_agent.py --hash SOURCE_DIR                 (print the source hash only)

Hashes the agent source (pyproject.toml and src/). When BUILD_DIR/<hash>/dist does not
exist yet, builds the wheel there from a copy of the source (the source tree stays clean);
with OFFLINE=true also collects the wheels of its dependencies in
BUILD_DIR/<hash>/wheelhouse.tar. Keeps the three newest builds.

Prints one JSON object: {"hash": ..., "wheel": PATH, "built": [...]}; "built" names what
this run built ("wheel", "wheelhouse"), so an empty list means nothing changed.

Only the Python standard library and pip: no GNU tools, and no network access when the
build for this source hash exists (a warm cache). A cold build uses the controller's
setuptools and wheel when this Python has them, else pip fetches them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

KEEP_BUILDS = 3


def source_files(source):
    """The files that make up the agent source, relative to SOURCE_DIR, in a stable order."""
    found = []
    if os.path.isfile(os.path.join(source, "pyproject.toml")):
        found.append("pyproject.toml")
    for root, dirs, files in os.walk(os.path.join(source, "src")):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.endswith(".egg-info"))
        for name in files:
            if not name.endswith(".pyc"):
                found.append(os.path.relpath(os.path.join(root, name), source).replace(os.sep, "/"))
    return sorted(found)


def source_hash(source):
    digest = hashlib.sha256()
    files = source_files(source)
    if "pyproject.toml" not in files:
        raise SystemExit("build_agent: %s has no pyproject.toml; agent_source_dir must point to the agent source" % source)
    for rel in files:
        with open(os.path.join(source, rel), "rb") as handle:
            digest.update(rel.encode() + b"\0" + hashlib.sha256(handle.read()).hexdigest().encode() + b"\n")
    return digest.hexdigest()[:16]


def can_build_without_isolation():
    """True when this Python has the agent's build backend (setuptools 70.1+, or 65+ with wheel)."""
    probe = ("import sys, setuptools\n"
             "v = tuple(int(p) for p in setuptools.__version__.split('.')[:2])\n"
             "if v < (70, 1):\n"
             "    import wheel\n"
             "sys.exit(0 if v >= (65, 0) else 1)\n")
    return subprocess.call([sys.executable, "-c", probe], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0


def pip_wheel(*args):
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"] + list(args)
    # pip's output goes to stderr: stdout carries only this script's JSON.
    result = subprocess.run(cmd, stdout=sys.stderr, check=False)
    if result.returncode != 0:
        raise SystemExit("build_agent: pip wheel failed (exit %d): %s" % (result.returncode, " ".join(cmd)))


def build_wheel(source, out):
    work = tempfile.mkdtemp(prefix="gatehouse-build-")
    try:
        copy = os.path.join(work, "agent")
        os.makedirs(copy)
        shutil.copy2(os.path.join(source, "pyproject.toml"), copy)
        shutil.copytree(os.path.join(source, "src"), os.path.join(copy, "src"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        staging = os.path.join(work, "dist")
        args = ["--no-deps", "--wheel-dir", staging]
        if can_build_without_isolation():
            args.append("--no-build-isolation")
        pip_wheel(*(args + [copy]))
        os.makedirs(out, exist_ok=True)
        try:
            os.rename(staging, os.path.join(out, "dist"))
        except OSError:
            if not os.path.isdir(os.path.join(out, "dist")):   # another run finished first: keep its build
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_wheelhouse(out, wheel):
    staging = tempfile.mkdtemp(prefix="wheelhouse-", dir=out)
    try:
        pip_wheel("--wheel-dir", staging, wheel)
        partial = os.path.join(out, "wheelhouse.tar.tmp")
        with tarfile.open(partial, "w") as archive:
            for name in sorted(os.listdir(staging)):
                archive.add(os.path.join(staging, name), arcname=name)
        os.replace(partial, os.path.join(out, "wheelhouse.tar"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def prune(build_dir):
    builds = [entry for entry in os.scandir(build_dir) if entry.is_dir() and not entry.name.startswith(".")]
    builds.sort(key=lambda entry: entry.stat().st_mtime, reverse=True)
    for entry in builds[KEEP_BUILDS:]:
        shutil.rmtree(entry.path, ignore_errors=True)


def main(argv):
    if len(argv) == 2 and argv[0] == "--hash":
        print(source_hash(argv[1]))
        return 0
    if len(argv) != 3 or argv[2] not in ("true", "false"):
        sys.stderr.write("usage: build_agent.py SOURCE_DIR BUILD_DIR true|false  (or --hash SOURCE_DIR)\n")
        return 2
    source, build_dir, offline = os.path.abspath(argv[0]), os.path.abspath(argv[1]), argv[2] == "true"
    digest = source_hash(source)
    out = os.path.join(build_dir, digest)
    built = []
    if not os.path.isdir(os.path.join(out, "dist")):
        build_wheel(source, out)
        built.append("wheel")
        prune(build_dir)
    wheels = sorted(name for name in os.listdir(os.path.join(out, "dist")) if name.endswith(".whl"))
    if len(wheels) != 1:
        raise SystemExit("build_agent: expected one wheel in %s, found %d" % (os.path.join(out, "dist"), len(wheels)))
    wheel = os.path.join(out, "dist", wheels[0])
    if offline and not os.path.isfile(os.path.join(out, "wheelhouse.tar")):
        build_wheelhouse(out, wheel)
        built.append("wheelhouse")
    print(json.dumps({"hash": digest, "wheel": wheel, "path": out, "built": built}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
