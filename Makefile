# The two commands a newcomer needs: `make demo` and `make test`. Both set everything up first
# (Debian packages when root, the .venv, the pip installs, the native build) and reuse it after.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medchain-installed
PYTEST_ARGS ?=

.PHONY: demo test bench lint setup clean

setup: $(STAMP)

$(STAMP): setup.py scripts/bootstrap.sh
	bash scripts/bootstrap.sh
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medchain demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider --timeout=300 $(PYTEST_ARGS) tests

bench: $(STAMP)
	$(PY) -m pip install -q --no-build-isolation -e ".[bench]"
	$(PY) -m pytest -q -p no:cacheprovider bench --benchmark-only --benchmark-columns=mean,ops,rounds

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info native/*.c native/*.so
