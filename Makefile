# Two commands a researcher needs: `make train` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
LOCK   := requirements.lock
PIP    := $(PY) -m pip install -c $(LOCK)
EXTRAS ?=
ARGS   ?=

.PHONY: install install-dev train test lint bench gpu-check lock clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(VENV)/.installed: $(PY) pyproject.toml $(LOCK)
	$(PIP) -e "$(if $(EXTRAS),.[$(EXTRAS)],.)"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e ".[dev]"
	touch $@

install: $(VENV)/.installed          ## create .venv and install the project; EXTRAS=slurm,postgres,faiss,pml

install-dev: $(VENV)/.installed-dev  ## ... with the test/lint/benchmark extras

train: install                        ## train the default experiment (Omniglot); ARGS="..." for overrides
	$(VENV)/bin/dml-train $(ARGS)

test: install-dev                     ## lint + the whole test suite (as root: with a local SLURM)
	$(PY) -m ruff check .
	@set -e; if [ "$$(id -u)" = 0 ] && [ "$${DML_SLURM:-1}" != 0 ]; then \
	  .ci/cluster.sh start; export DML_SLURM=1; fi; \
	$(PY) -m pytest -q $(ARGS)

bench: install-dev                    ## all benchmarks (print ratios against the named peers)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

gpu-check: install                    ## on a CUDA machine, before a long cluster job (~5 min); ARGS="--compile"
	$(PY) -m dml.cli.gpu_check $(ARGS)

lock: install-dev                     ## re-pin every dependency after editing pyproject.toml or constraints.txt
	$(PY) -m uv pip compile pyproject.toml --all-extras --universal --python-version 3.10 \
		-c constraints.txt -o $(LOCK)

clean:
	rm -rf $(VENV) .pytest_cache runs multirun outputs
