# Gatehouse — the two commands a newcomer needs are `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: deps demo demo-down test test-agent test-netns test-collection bench clean

deps:
	@scripts/install-deps.sh

## Stand up a cluster on this machine, log in and run a command on a node through the proxy.
demo: deps
	@scripts/demo.sh up

demo-down:
	@scripts/demo.sh down

## Every test: agent unit and end-to-end tests (real processes on loopback), test-host harness.
test: deps
	$(PY) -m pytest -q agent/tests tests/netns
	scripts/test-collection.sh

test-agent: deps
	$(PY) -m pytest -q agent/tests

## The Ansible collection: ansible-test sanity and units, then every module against real agents.
test-collection: deps
	scripts/test-collection.sh

bench: deps
	$(PY) bench/bench_ssh.py
	$(PY) bench/bench_access.py

clean:
	rm -rf $(VENV) .pytest_cache
