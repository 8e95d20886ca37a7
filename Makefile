# The few commands everybody runs. `make demo` and `make test` create the environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# Development machines keep real handwriting in ../shared/data; use it when it is there.
SHARED_DATA := $(wildcard $(abspath ../shared/data))
ifneq ($(SHARED_DATA),)
export CIFRAS_SHARED_DATA ?= $(SHARED_DATA)
ifneq ($(wildcard $(SHARED_DATA)/mnist/mnist.npz),)
export CIFRAS_MNIST_PATH ?= $(SHARED_DATA)/mnist/mnist.npz
endif
endif

.PHONY: venv demo test lint bench clean models targets

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,onnx]'
	touch $@

demo: venv
	$(BIN)/cifras demo

test: venv
	$(BIN)/ruff check .
	$(BIN)/pytest

# Issue #5's accuracy targets for the champion (MODEL=models:/NAME/VERSION for another), one
# table with the command behind each row; about a minute on two cores.
targets: venv
	$(BIN)/cifras targets $(if $(MODEL),--model $(MODEL))

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf .cifras .pytest_cache

# The development model registry rebuilt from the shared handwriting: v1-v6, then one
# fine-tuning round per tag in ROUNDS (default e f g h), each promoted only by the rule, until
# the rule refuses one. 45-85 minutes to v6, ~5 minutes a round. MODELS_DIR is where it goes.
MODELS_DIR ?= .cifras/models
models: venv
	CIFRAS_DATA_DIR=$(abspath $(MODELS_DIR)) PATH=$(abspath $(BIN)):$$PATH bash deploy/rebuild-models.sh
