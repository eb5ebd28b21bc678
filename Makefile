# The two commands of the README: `make run` and `make test`. Each installs what it needs.
SHELL := /bin/bash
VENV := .venv
CONFIG ?= conf/dev.toml
PYTEST_ARGS ?=
# `make test` spreads the tests over two worker processes (pytest-xdist), one per core of CI's
# machine; a module's tests stay on one worker (--dist loadscope), so its module-scoped rig (a
# private Postfix, Sendmail) starts once. PYTEST_WORKERS=0 runs everything in one process. Tests
# that bound a reply's wall-clock time (marked `timing`) run after, alone: another worker's load
# must not push a reply past its bound.
PYTEST_WORKERS ?= 2

.PHONY: run test bootstrap check-config bench clean deb

bootstrap:
	@scripts/bootstrap.sh

run: bootstrap
	@mkdir -p var
	$(VENV)/bin/mailflow run -c $(CONFIG)

test: bootstrap
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -n $(PYTEST_WORKERS) --dist loadscope -m 'not timing' $(PYTEST_ARGS)
	$(VENV)/bin/python -m pytest -m timing $(PYTEST_ARGS) || [ $$? -eq 5 ]  # 5: PYTEST_ARGS selected none

check-config: bootstrap
	@mkdir -p var
	$(VENV)/bin/mailflow check-config -c $(CONFIG)

# Benchmarks are not tests: never part of `make test` or CI. Results go to bench/results/.
# ANCHORS=rspamd adds rspamd (installed from Debian if missing) as a baseline through Postfix.
ANCHORS ?=
bench:
	@EXTRA_DEBS="$(if $(findstring rspamd,$(ANCHORS)),rspamd)" scripts/bootstrap.sh
	$(VENV)/bin/python -m pip install -q -r bench/requirements.lock
	$(VENV)/bin/python -m bench.postfix --anchors "$(ANCHORS)"
	$(VENV)/bin/python -m bench.plot
	$(VENV)/bin/python -m bench.profile
	$(VENV)/bin/python -m bench.roundtrips
	$(VENV)/bin/python -m bench.scale
	$(VENV)/bin/python -m bench.fleet
	$(VENV)/bin/python -m bench.suppression
	$(VENV)/bin/python -m bench.rbl
	$(VENV)/bin/python -m bench.adversarial
	$(VENV)/bin/python -m bench.feedback

# dist/mailflow_VERSION_ARCH.deb (README, "Install"); rebuilt only when its sources changed.
deb:
	@scripts/build-deb.sh

clean:
	rm -rf var .pytest_cache .hypothesis
