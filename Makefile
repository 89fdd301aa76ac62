# The two set-up commands of README.md. Each makes the virtual environment it
# needs (.venv) on its own: PyTorch first (the CPU build on this machine's disk
# when no torch is installed yet), then aerec with its test extra.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
LOCAL_WHEELS := $(wildcard /opt/wheels)

.PHONY: demo test install

demo: $(VENV)/.installed
	$(BIN)/aerec demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/pip install $(if $(LOCAL_WHEELS),--find-links $(LOCAL_WHEELS)) "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -e ".[test]"
	touch $@
