# The two commands a newcomer needs: `make demo` and `make test`. Both set everything up first
# (Debian packages when root, the .venv, the pip installs, the native build) and reuse it after.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medchain-installed
PYTEST_ARGS ?=
# pytest-xdist workers, a test file each at a time (a module's network fixture starts once). 0: one
# process, the default and what CI runs. 2, one per core, takes the suite from ~20 to ~8 min on this
# 2-core machine, but the second worker's load makes load-sensitive tests flaky (one of nine full
# runs failed in tests/test_snapshot_join.py: the late validator replayed past its "fresh" window
# before it heard f+1 heartbeats, and never asked for a checkpoint): use it for quick local runs
TEST_WORKERS ?= 0

FUZZ_SECONDS ?= 300

.PHONY: demo test bench lint setup clean interop fuzz mutation

setup: $(STAMP)

# the native sources too: an edited .pyx is rebuilt by the next make, not left stale in the .venv
$(STAMP): setup.py scripts/bootstrap.sh $(wildcard native/*.pyx native/*.h)
	bash scripts/bootstrap.sh
	touch $(STAMP)

# every validator, CLI and client process imports ~450 modules: bytecode compiled once (the editable
# install does not compile the project's own sources, and with PYTHONDONTWRITEBYTECODE set no run
# writes it) saves each validator start ~0.5 s of CPU on this machine (2.2 -> 1.6 s)
BYTECODE = $(PY) -m compileall -q node devices

demo: $(STAMP)
	$(BYTECODE)
	$(VENV)/bin/medchain demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(BYTECODE)
	$(PY) -m pytest -q -p no:cacheprovider --timeout=300 -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS) tests

bench: $(STAMP)
	$(PY) -m pip install -q --no-build-isolation -e ".[bench]"
	$(PY) -m pytest -q -p no:cacheprovider bench --benchmark-only --benchmark-columns=mean,ops,rounds

# mutation testing of the security core (scripts/mutation.py; not part of `make test`): each module
# against its fast test files, a score per module; MUTATION_MODULES picks some, e.g. node/crypto/seal.py
MUTATION_MODULES ?=
MUTATION_CHILDREN ?= 2
# the pin is the `mutation` extra in setup.py, installed alone so the native build is not redone
mutation: $(STAMP)
	$(PY) -m pip install -q "$$(sed -n 's/.*"\(mutmut[^"]*\)".*/\1/p' setup.py)"
	nice -n 19 $(PY) scripts/mutation.py --children $(MUTATION_CHILDREN) $(MUTATION_MODULES)

# every atheris target (tests/fuzz/) for FUZZ_SECONDS each; crashes land in fuzz-artifacts/
# libFuzzer ends each run with exit(), so no Python finalizer removes the run's temporary corpus and
# validator home: TMPDIR points them into fuzz-artifacts/tmp, emptied before each target and removed
# after the last (a failing target leaves its own there, beside its crash file)
fuzz: $(STAMP)
	$(PY) -m pip install -q --no-build-isolation -e ".[fuzz]"
	mkdir -p fuzz-artifacts
	for t in wire tx block consensus gatt http; do \
	  rm -rf fuzz-artifacts/tmp && mkdir fuzz-artifacts/tmp && \
	  TMPDIR=$(CURDIR)/fuzz-artifacts/tmp $(PY) -m tests.fuzz.run $$t -max_total_time=$(FUZZ_SECONDS) -timeout=30 \
	    -artifact_prefix=fuzz-artifacts/$$t- $$( [ $$t = http ] && echo -dict=tests/fuzz/http.dict ) || exit 1; \
	done
	rm -rf fuzz-artifacts/tmp

# Bitswap interop with Helia (JavaScript IPFS) on Node 22, both npm packages installed into
# build/interop. Separate from `make test`: it needs the npm registry (~1 min the first time).
INTEROP := $(CURDIR)/build/interop
interop: $(STAMP)
	mkdir -p $(INTEROP)
	cp interop/package.json interop/helia_peer.mjs $(INTEROP)/
	cd $(INTEROP) && npm install --no-audit --no-fund --loglevel=error
	MEDCHAIN_HELIA_DIR=$(INTEROP) $(PY) -m pytest -q -p no:cacheprovider --timeout=600 interop

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info native/*.c native/*.so
