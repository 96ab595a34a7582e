# Everything runs from a local virtual environment, created and filled on first use.
# The install is redone only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -c "import torchvision.ops, cv2; torchvision.ops.nms"
	touch $(STAMP)

test: $(STAMP)
	bash tests/setup-chromium.sh
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m jobs.demo

bench: $(STAMP)
	$(PY) bench/restore_forward.py
	$(PY) bench/pipeline.py
	$(PY) bench/degrade.py

clean:
	rm -rf $(VENV) demo_output
