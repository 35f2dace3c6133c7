# The two commands a newcomer needs: `make serve` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: serve test test-fast lint docs proto system-deps train clean

# Serving runtime only (the server extra, no torch): what a deployment installs, and installed as a
# deployment installs it: not editable (setuptools warns of an editable install; the wheel carries
# the bundled model and the playground). A venv the dev step has made editable stays editable, or
# its tests would run an installed copy. pip is not quieted: a first install takes a while, and what
# it is downloading is the progress a newcomer waits on.
$(BIN)/.runtime: pyproject.toml
	@echo "==> creating $(VENV), a virtual environment for vae-serve"
	$(PYTHON) -m venv $(VENV)
	@echo "==> installing vae-serve and its serving runtime into $(VENV) (downloads on a first run)"
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install $(if $(wildcard $(BIN)/.dev),-e )".[server]"
	touch $@

# Runtime + trainer + test and lint tools, editable: the tests and vae-train work on this tree.
$(BIN)/.dev: pyproject.toml $(BIN)/.runtime
	@echo "==> installing the trainer and the test and lint tools into $(VENV)"
	$(BIN)/python -m pip install -e ".[server,train,dev]"
	touch $@

serve: $(BIN)/.runtime
	@echo "==> starting vae-serve: it says 'ready' with the addresses to open; Ctrl-C stops it"
	$(BIN)/vae-serve

# What the tests need from Debian: the data, the real tools the deployment is checked with, and
# the browser the playground is tested in (headless Chromium and its Selenium driver).
system-deps:
	@missing=""; \
	[ -d $(DATA_DIR) ] || missing="$$missing dataset-fashion-mnist"; \
	[ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

lint: $(BIN)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python protos/generate.py --check
	$(BIN)/python tools/typecheck.py

# The documentation site, offline; a broken link or anchor fails the build.
docs: $(BIN)/.dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

proto: $(BIN)/.dev
	$(BIN)/python protos/generate.py

test: $(BIN)/.dev system-deps lint docs
	$(BIN)/pytest

test-fast: $(BIN)/.dev system-deps
	$(BIN)/pytest -m "not slow"

# Retrain the bundled default model's recipe (all flags at their defaults, as README's model card
# records) into the next free version; the version is checked before training starts.
train: $(BIN)/.dev system-deps
	$(BIN)/vae-train

clean:
	rm -rf $(VENV) checkpoints site .pytest_cache .ruff_cache *.egg-info
