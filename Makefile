# kronos-atomicity: every target installs what it needs and is safe to rerun.
#
#   make test        system packages, the virtual environment, the Docker image,
#                    then pytest (the container tests need Docker; no skipping)
#   make demo        the fault matrix against an embedded PostgreSQL
#   make notebooks   JupyterLab with an embedded PostgreSQL behind it
#   make docker      Debian's docker.io and debootstrap, and a running dockerd
#                    (sudo when not root, and only when something is missing)
#   make image       the pg_cron image of the testcontainers backend (no registry)
#   make strip-notebooks  remove outputs from notebooks/ before committing
#   make clean       remove the virtual environment and every cache

VENV ?= .venv
PYTHON ?= python3
PYTEST_ARGS ?=

# Where kronos.server caches initialised clusters (keep in step with it).
USER_CACHE := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/kronos-atomicity
ROOT_CACHE := /var/tmp/kronos-atomicity-root
KRONOS_CACHE := $(strip $(or $(KRONOS_CACHE_DIR),$(if $(filter 0,$(shell id -u)),\
	$(ROOT_CACHE),$(USER_CACHE))))
TMP := $(or $(TMPDIR),/tmp)

.PHONY: help venv system-deps docker image demo test notebooks strip-notebooks clean

help:
	@echo "targets: test demo notebooks strip-notebooks venv system-deps docker image clean"
	@echo "variables: VENV=$(VENV) PYTHON=$(PYTHON) PYTEST_ARGS=$(PYTEST_ARGS)"
	@echo "cluster cache: [$(KRONOS_CACHE)]"

system-deps:
	PYTHON=$(PYTHON) bash scripts/install-system-deps.sh

# Host networking only: dockerd runs with --bridge=none --iptables=false.
docker:
	PYTHON=$(PYTHON) bash scripts/install-system-deps.sh docker
	bash scripts/start-docker.sh

# Skipped when the image exists; the debootstrap root fs is cached in /var/tmp.
image: docker
	bash scripts/build-image.sh

venv: $(VENV)/.installed

# Reinstall only when pyproject.toml changed since the last install.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null \
		|| PYTHON=$(PYTHON) bash scripts/install-system-deps.sh
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -e '.[dev]'
	touch $@

demo: system-deps venv
	$(VENV)/bin/kronos-atomicity matrix

test: system-deps venv image
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

notebooks: system-deps venv
	$(VENV)/bin/kronos-atomicity lab

strip-notebooks:
	$(VENV)/bin/python scripts/strip-notebooks.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis build
	rm -rf *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -rf $(KRONOS_CACHE) $(TMP)/kronos-atomicity-$(shell id -u)
