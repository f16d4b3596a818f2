# One entry point for people and CI. `make test` and `make demo` are the README's quickstart.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := constraints.txt

.PHONY: test demo install lint typecheck layers unit schema bench clean image

$(BIN)/ranvier: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	touch $(BIN)/ranvier

install: $(BIN)/ranvier

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

layers: install
	$(BIN)/lint-imports

unit: install
	$(BIN)/pytest

test: lint typecheck layers unit

schema: install
	$(BIN)/ranvier schema > manifests/schema/axon.schema.json

demo: install
	$(BIN)/python -m ranvier.demo

bench: install
	$(BIN)/python bench/bus.py --quick

# The control-plane and model-server image (Dockerfile) with whichever engine is installed.
IMAGE ?= ranvier:dev
image:
	@engine=$$(command -v docker || command -v podman || command -v buildah); \
	if [ -z "$$engine" ]; then \
		echo "make image: no container engine found; install docker, podman or buildah" >&2; \
		exit 1; \
	fi; \
	case "$$engine" in \
		*buildah) "$$engine" bud -t $(IMAGE) . ;; \
		*) "$$engine" build -t $(IMAGE) . ;; \
	esac

clean:
	rm -rf $(VENV) .ranvier .ranvier-demo .pytest_cache .mypy_cache .ruff_cache
