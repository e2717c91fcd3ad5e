# Gatehouse — the two commands a newcomer needs are `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: deps demo demo-down test test-unit test-agent test-collection lint test-molecule bench clean

deps:
	@scripts/install-deps.sh

## site.yml on the local inventory: a root, a leaf and its node on this machine, trust
## between them; then `gate clusters` and `uname -a` on the leaf's node through the root.
demo: deps
	@scripts/demo.sh up

demo-down:
	@scripts/demo.sh down

## Every test: agent unit and end-to-end tests (real processes on loopback), multi-host tests
## on network-namespace hosts, the collection's modules, ansible-lint, the molecule scenarios,
## and upgrade.yml from this build to a bumped one with a session running across it.
test: deps
	$(PY) -m pytest -q agent/tests tests/netns
	scripts/test-collection.sh
	scripts/lint.sh
	scripts/test-molecule.sh
	scripts/test-upgrade.sh

## The agent's tests alone: unit (pure, about 2 s), integration (real servers in process), e2e (daemons).
test-agent: deps
	$(PY) -m pytest -q agent/tests

## The fast loop while editing: the agent's pure tests only.
test-unit: deps
	$(PY) -m pytest -q agent/tests/unit

## The Ansible collection: ansible-test sanity and units, then every module against real agents.
test-collection: deps
	scripts/test-collection.sh

lint: deps
	scripts/lint.sh

test-molecule: deps
	scripts/test-molecule.sh

bench: deps
	$(PY) bench/bench_ssh.py
	$(PY) bench/bench_access.py
	$(PY) bench/bench_trust.py
	$(PY) bench/bench_modules.py
	$(PY) bench/bench_site.py

clean:
	rm -rf $(VENV) .pytest_cache
