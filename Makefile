# `make demo` and `make test` each do every set-up step on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is pinned and installed first: on a CPU machine this pin takes the local CPU build,
# while a range that admits newer releases would pull several GB of CUDA packages.
TORCH_PIN := torch==2.13.0

.PHONY: demo test lint grounding benchmarks clean

$(VENV)/.installed: setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e ".[train,dev]"
	touch $@

demo: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) -m gligen_ext.cli demo

test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n 2 --durations=10

# The shapes-world grounding benchmark: regenerates docs/grounding.md, its picture and benchmarks/results/grounding.json.
WEIGHTS := gligen_ext/shapes_world/weights
grounding: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(VENV)/bin/gligen-ext eval --base $(WEIGHTS)/base \
		$(foreach name,boxes keypoints depth multi,--adapter $(name)=$(WEIGHTS)/adapters/$(name).safetensors) \
		--guidance 4 --out-json benchmarks/results/grounding.json --out-md docs/grounding.md \
		--picture docs/images/grounding.png

# The speed and memory benchmarks: regenerates docs/performance.md and benchmarks/results/cpu.json.
benchmarks: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.run

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) out .pytest_cache
