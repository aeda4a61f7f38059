# ShardGuard — every target creates .venv by itself (Python >= 3.11, make, package registries).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench bench-frost bench-ecdsa bench-attestation install lock clean

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ShardGuard needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m shardguard.demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check shardguard tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: bench-frost bench-ecdsa bench-attestation

bench-frost: $(STAMP)
	@$(PY) bench/bench_frost.py

bench-ecdsa: $(STAMP)
	@$(PY) bench/bench_ecdsa.py

bench-attestation: $(STAMP)
	@$(PY) bench/bench_attestation.py
	@$(PY) bench/bench_attestation_dcap.py

# Load through the API on a developer cluster (coordinator + 3 node processes on loopback):
# 2-of-3 Ed25519 and ECDSA signing with 16 concurrent clients; ~1-2 min, so not part of `bench`.
.PHONY: bench-service
bench-service: $(STAMP)
	@$(PY) bench/bench_service.py

# Re-pin after editing pyproject.toml (needs pip-tools in the venv).
lock: $(STAMP)
	$(PY) -m pip install -q pip-tools
	$(VENV)/bin/pip-compile -q --extra dev --strip-extras -o requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
