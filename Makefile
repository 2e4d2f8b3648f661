# Two commands on a fresh machine: `make report` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXPERIMENT ?= demo
DATA_DIR ?=
CORES ?= $(shell nproc 2>/dev/null || echo 1)   # heavy steps take them all, one at a time
SNAKE_ARGS ?=

.PHONY: report test venv clean-book publish

$(BIN)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	$(BIN)/python -m pip install --no-deps -e .
	$(BIN)/python -m helpers.kernel install   # the python3 kernel, on sockets no other step can take
	touch $@

venv: $(BIN)/.installed

# Real-data experiments without DATA_DIR fetch their datasets with kagglehub first. helpers.runner
# checks the data folders, holds the folder's lock around snakemake (a stale one is cleared), and
# ends with what failed and what did not complete; its exit status is non-zero when a run failed.
report: venv
	@dirs="$$($(BIN)/python -m helpers.workflow data-dirs $(EXPERIMENT) --data-dir "$(DATA_DIR)")" && \
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m helpers.runner report $(EXPERIMENT) --data-dir "$$dirs" \
	  --cores $(CORES) -- $(SNAKE_ARGS)

test: venv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

# Push the built book to the gh-pages branch of PUBLISH_REMOTE with ghp-import (what Jupyter
# Book's docs recommend); -n adds .nojekyll so that GitHub Pages serves _static/.
PUBLISH_REMOTE ?= origin
publish:
	@test -f _build/html/index.html || { echo "no book in _build/html: run 'make report' first" >&2; exit 1; }
	$(BIN)/ghp-import -n -p -f -r $(PUBLISH_REMOTE) -b gh-pages \
	  -m "book of $$(git rev-parse --short HEAD 2>/dev/null || echo 'an unversioned tree')" _build/html
	@echo "Published _build/html to branch gh-pages of $(PUBLISH_REMOTE)"

clean-book:
	rm -rf book/_build book/generated
