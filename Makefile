# Every target sets itself up: the first call creates .venv/ and installs the package into it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RUN    ?= demo
WH     ?= storage

AFTER  ?= $(RUN)-ctc

.PHONY: install extract analyze reduce report demo-models all test test-fast bench bench-gpu clean

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

extract: install  ## the main job: embedded corpus through the embedded model into $(WH)
	$(PY) -m pipeline extract --run $(RUN) --warehouse $(WH)

analyze: install
	$(PY) -m pipeline analyze --run $(RUN) --warehouse $(WH)

report: install  ## storage/report/index.html (+ png/): the maps' reductions first, then the page (report only reads)
	$(PY) -m pipeline reduce --run $(RUN) --warehouse $(WH) --methods pca --n 2000
	$(PY) -m pipeline reduce --run $(RUN) --warehouse $(WH) --layers=-1,2,4 --methods tsne,umap --n 2000
	$(PY) -m pipeline report --runs $(RUN) --warehouse $(WH) --out $(WH)/report

demo-models: install  ## the demo pair's "after" model: the default model fine-tuned with CTC (~3 min, once)
	$(PY) -m pipeline demo-models --warehouse $(WH)

all: install demo-models  ## before/after on the embedded default: extract, labels, analyze, reduce, compare, report
	$(PY) -m pipeline extract --run $(RUN) --warehouse $(WH)
	$(PY) -m pipeline extract --run $(AFTER) --model default-ctc --warehouse $(WH)
	$(PY) -m pipeline labels --run $(RUN) --model default-ctc --warehouse $(WH)
	$(PY) -m pipeline labels --run $(AFTER) --model default-ctc --warehouse $(WH)
	$(PY) -m pipeline analyze --run $(RUN) --warehouse $(WH)
	$(PY) -m pipeline analyze --run $(AFTER) --warehouse $(WH)
	$(PY) -m pipeline analyze --run $(RUN) --tier ctc_greedy --no-probe --warehouse $(WH)
	$(PY) -m pipeline analyze --run $(AFTER) --tier ctc_greedy --no-probe --warehouse $(WH)
	$(PY) -m pipeline reduce --run $(RUN) --warehouse $(WH) --methods pca
	$(PY) -m pipeline reduce --run $(AFTER) --warehouse $(WH) --methods pca
	$(PY) -m pipeline reduce --run $(RUN) --warehouse $(WH) --layers=-1,2,4 --methods tsne,umap
	$(PY) -m pipeline reduce --run $(AFTER) --warehouse $(WH) --layers=-1,2,4 --methods tsne,umap
	$(PY) -m pipeline compare --runs $(RUN),$(AFTER) --warehouse $(WH)
	$(PY) -m pipeline report --runs $(RUN),$(AFTER) --warehouse $(WH) --out $(WH)/report
	$(PY) -m pipeline report --runs $(RUN),$(AFTER) --warehouse $(WH) --tier ctc_greedy --methods pca --out $(WH)/report-ctc_greedy

test: install  ## every test, slow ones included (what CI runs)
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

bench: install  ## writes bench/results.json, quoted in the README
	$(PY) -m bench.run --out bench/results.json

bench-gpu: install  ## the CUDA bench (bench/gpu.py; one GPU, <= 8 min): bench/results-gpu.json
	$(PY) -m bench.gpu --out bench/results-gpu.json

clean:
	rm -rf $(WH)/*/ $(WH)/_* .pytest_cache
