# Two entry points: `make train` (default recipe on the embedded digits data) and `make test`.
# Each creates .venv from requirements.txt on first use (python3 and pip are all a machine needs).
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: train test lint format clean-venv

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

train: $(VENV)/.installed
	$(PY) main.py --resume auto $(ARGS)

test: $(VENV)/.installed
	PJRT_DEVICE=CPU $(PY) -m pytest -q -n 2

lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check . && $(VENV)/bin/ruff check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean-venv:
	rm -rf $(VENV)
