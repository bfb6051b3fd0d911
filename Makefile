# qwen-pg: every target does its own set-up, so `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip --disable-pip-version-check -q
export XDG_RUNTIME_DIR ?= /tmp/runtime-$(shell id -u)
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test lint sysdeps venv extension clean

## demo: the main job on the embedded database
demo: venv sysdeps
	$(VENV)/bin/qwen-pg demo

## test: the whole suite (embedded PostgreSQL, tiny generated Qwen3 models)
test: venv sysdeps
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .

venv: $(VENV)/.installed

# torch==2.13.0 is pinned in pyproject.toml: pip resolves it to the CPU wheel; vLLM stays an extra.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e '.[dev]'
	touch $@

## sysdeps: a C compiler, make and the libcurl headers (installed with apt-get when missing and root)
sysdeps:
	@if ! printf '#include <curl/curl.h>\n' | cc -E -x c - >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing libcurl headers (libcurl4-openssl-dev)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libcurl4-openssl-dev) >/dev/null; \
	  else \
	    echo "error: the libcurl headers are missing; install libcurl4-openssl-dev (Debian/Ubuntu) or libcurl-devel" >&2; exit 1; \
	  fi; \
	fi

extension: venv sysdeps
	$(MAKE) -C extension PG_CONFIG=$$($(PY) -c 'from embedder_worker.embedded_db import pg_config_path; print(pg_config_path())')

clean:
	$(MAKE) -C extension clean PG_CONFIG=$$($(PY) -c 'from embedder_worker.embedded_db import pg_config_path; print(pg_config_path())') || true
	rm -rf build *.egg-info .pytest_cache .ruff_cache
