# The two commands the README opens with: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install bench bench-gpu clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,webdataset,parquet]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/zs demo --out demo-out

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/fit.py
	$(BIN)/python bench/sweep.py
	$(BIN)/python bench/evaluate.py

# The accelerator benchmark (one GPU, a few minutes; table + bench/results/gpu-*.json).
bench-gpu: $(STAMP)
	$(BIN)/python bench/gpu.py

clean:
	rm -rf $(VENV) demo-out build *.egg-info
