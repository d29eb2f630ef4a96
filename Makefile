# Two commands (README): `make demo` and `make test`. Both install into .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.cadfd-installed
MSG_INPUTS := $(wildcard msg/*.msg) $(wildcard interfaces/cadfd_ros_interfaces/*) interfaces/build_into_venv.sh
DEMO_OUT ?= out/demo

.PHONY: venv demo test bench msgs prior-data clean gpu-wheels

venv: $(STAMP)

# torch first, pinned: an unpinned torch from any other requirement would fetch CUDA wheels.
$(STAMP): requirements.txt setup.py package.xml $(MSG_INPUTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -r requirements.txt $(TORCH_PIN)
	$(PIP) install -q --no-deps --no-build-isolation -e .
	bash interfaces/build_into_venv.sh $(VENV) .msg-build
	touch $@

# Custom messages: msg/*.msg -> cadfd_ros_interfaces, built and installed into the venv with the
# pinned pip ROS tools (interfaces/build_into_venv.sh). Incremental; `make venv` runs it too.
msgs: venv
	bash interfaces/build_into_venv.sh $(VENV) .msg-build

demo: venv
	HF_HUB_OFFLINE=1 $(VENV)/bin/cadfd demo --out-dir $(DEMO_OUT)

test: venv
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q test

bench: venv
	HF_HUB_OFFLINE=1 $(VENV)/bin/cadfd bench --out-dir out/bench

# Training/eval photos for the diffusion prior (issue 3), unpacked into the git-ignored .prior-data/.
# Debian wallpaper photos = training set; skimage/sklearn samples = held-out set (see cadfd_ros/prior/MANIFEST.csv).
PRIOR_DATA ?= .prior-data
PRIOR_DEBS := lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 plasma-workspace-wallpapers
prior-data: venv
	mkdir -p $(PRIOR_DATA)/debs $(PRIOR_DATA)/x
	cd $(PRIOR_DATA)/debs && for p in $(PRIOR_DEBS); do ls $${p}_*.deb >/dev/null 2>&1 || apt-get download $$p || { apt-get update -q && apt-get download $$p; }; done
	for p in $(PRIOR_DEBS); do mkdir -p $(PRIOR_DATA)/x/$$p && dpkg-deb -x $(PRIOR_DATA)/debs/$${p}_*.deb $(PRIOR_DATA)/x/$$p; done
	$(PY) -m cadfd_ros.prior.data $(PRIOR_DATA)

clean:
	rm -rf $(VENV) out build *.egg-info

# The wheels scripts/gpu_check.sh needs on a lent GPU machine (it has torch, numpy, scipy, scikit-image,
# OpenCV and huggingface_hub, but not diffusers, and cannot download). Carry .gpu-wheels to it.
gpu-wheels: venv
	$(PIP) download -q --no-deps --only-binary=:all: -d .gpu-wheels diffusers==$$($(PY) -c "import diffusers; print(diffusers.__version__)")
