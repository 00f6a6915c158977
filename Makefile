PYTHON ?= python
.PHONY: install test test-fast lint format demo toy app

install:  ## torch, detectron2 (from source unless importable), fsod-d2 editable + dev extras
	PYTHON=$(PYTHON) bash scripts/install.sh

test: install  ## CPU test suite, both tiers (tiny configs); installs first (seconds if installed)
	$(PYTHON) -m pytest -q tests

test-fast: install  ## the fast tier only: unit tests, no multi-process runs or training loops
	$(PYTHON) -m pytest -q -m "not slow" tests

lint:
	$(PYTHON) -m ruff check fsod_d2 fsod_datagen fsod_deploy tools tests benchmarks setup.py
	$(PYTHON) -m ruff format --check fsod_d2 fsod_datagen fsod_deploy tools tests benchmarks setup.py

format:
	$(PYTHON) -m ruff check --fix fsod_d2 fsod_datagen fsod_deploy tools tests benchmarks setup.py
	$(PYTHON) -m ruff format fsod_d2 fsod_datagen fsod_deploy tools tests benchmarks setup.py

toy:  ## generate the toy few-shot dataset under $$DETECTRON2_DATASETS (default datasets/)
	$(PYTHON) tools/make_toy_dataset.py

demo: install  ## toy data -> base training on CPU -> novel K-shot eval (bAP/nAP) -> visualizations
	bash scripts/demo.sh

app: install  ## the app (tools/app.py) on the demo model with the demo's novel classes; prints the URL
	@out=$${DEMO_OUTPUT:-output/demo}; \
	if [ ! -f "$$out/model_final.pth" ]; then \
	  echo "make app: $$out/model_final.pth is missing; run 'make demo' first (it trains the demo model)"; \
	  exit 1; \
	fi; \
	$(PYTHON) tools/app.py --config-file $${DEMO_CONFIG:-configs/demo/fsod_toy_mnv2.yaml} \
	    --weights "$$out/model_final.pth" --supports "$$out/novel_supports"
