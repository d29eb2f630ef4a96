# Two commands (README): `make demo` and `make test`. Both install into .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.cadfd-installed
DEMO_OUT ?= out/demo

.PHONY: venv demo test bench msgs prior-data clean

venv: $(STAMP)

# torch first, pinned: an unpinned torch from any other requirement would fetch CUDA wheels.
$(STAMP): requirements.txt setup.py package.xml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -r requirements.txt $(TORCH_PIN)
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $@

demo: venv
	HF_HUB_OFFLINE=1 $(VENV)/bin/cadfd demo --out-dir $(DEMO_OUT)

test: venv
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q test

bench: venv
	HF_HUB_OFFLINE=1 $(VENV)/bin/cadfd bench --out-dir out/bench

clean:
	rm -rf $(VENV) out build *.egg-info
