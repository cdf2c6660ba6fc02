# Two commands do all the set-up on a fresh machine:
#   make test   creates .venv, installs the package (CPU torch pinned), lints (ruff), runs the tests
#   make demo   the same set-up, then simulates a screen, trains sVAE+ and writes its outputs
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test demo clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python -m scperturb_vae.pipelines.demo --out demo_output

clean:
	rm -rf $(VENV) demo_output .pytest_cache
