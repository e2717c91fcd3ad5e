# Gatehouse — the two commands a newcomer needs are `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: deps demo demo-down test test-agent test-netns bench clean

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

test-agent: deps
	$(PY) -m pytest -q agent/tests

bench: deps
	$(PY) bench/bench_ssh.py
	$(PY) bench/bench_access.py

clean:
	rm -rf $(VENV) .pytest_cache
