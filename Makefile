# Every target creates .venv and installs the project into it when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
BUDGET ?= 3.1M

.PHONY: search test docs bench clean-venv

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

search: $(VENV)/.installed
	$(VENV)/bin/nas search --budget $(BUDGET)

# Two workers, each taking whole test files (a module's Ray and search fixtures start once): Ray and subprocess
# tests spend part of their time waiting, which the other worker fills (6 min on 2 quiet cores; one torch thread
# each, tests/conftest.py).
test: $(VENV)/.installed
	$(PY) -m pytest -n 2 --dist loadfile

docs: $(VENV)/.installed
	$(VENV)/bin/nas presets --markdown > docs/presets.md

clean-venv:
	rm -rf $(VENV)
