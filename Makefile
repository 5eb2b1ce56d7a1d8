PY := .venv/bin/python
.PHONY: quickstart test test-fast lint format setup
setup: .venv/.installed
.venv/.installed: pyproject.toml
	test -d .venv || python3 -m venv .venv
	.venv/bin/pip install -q -e '.[test,dev]'
	@test -d /usr/share/datasets/fashion-mnist || (apt-get install -y -qq dataset-fashion-mnist || echo "could not install dataset-fashion-mnist")
	@# PostgreSQL's server binaries for tests/test_mlflow_postgres.py, which starts its own throwaway cluster; the
	@# package's default cluster (a server on port 5432 that nothing uses) is not created
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ( (mkdir -p /etc/postgresql-common/createcluster.d && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/sweeplab.conf) ; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql || echo "could not install postgresql")
	touch $@
# The main job: one real epoch of ResNet-preact-20 on the full Fashion-MNIST (no Ray), then the
# quickstart sweep in smoke mode on a local Ray, ending with its best config and the smoke run's table
# (its 8 rows; `sweeplab table quickstart` without --smoke shows full runs only).
quickstart: setup
	rm -rf runs/quickstart-train
	.venv/bin/sweeplab train configs/fashion_mnist/resnet_preact20.yaml train.epochs=1 optim.lr=0.1 --output runs/quickstart-train
	.venv/bin/sweeplab run sweeps/quickstart.yaml --smoke
	.venv/bin/sweeplab table quickstart --smoke
# Two pytest-xdist workers, a whole test file at a time (a file's module fixtures run once), the longest
# files first (tests/conftest.py): most of the suite waits on processes it started (Ray, MLflow, servers),
# so two workers keep a 2-core machine busy. TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)
# sweeplab's own modules compiled once: where PYTHONDONTWRITEBYTECODE is set, each of the hundreds of processes
# the suite starts (CLI runs, Ray workers, followers) would otherwise compile them again (~0.1 CPU-s each).
test: setup
	$(PY) -m compileall -q src tests benchmarks
	$(PY) -m pytest -q $(XDIST) --durations=15
# The quick loop while editing: everything but the tests marked slow (CI runs them all, via `make test`).
test-fast: setup
	$(PY) -m pytest -q $(XDIST) -m "not slow"
# What CI checks besides the tests: lint rules, formatting, and types (settings in pyproject.toml).
lint: setup
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/ruff format --check src tests benchmarks
	.venv/bin/mypy
# Apply what `make lint` can fix by itself: autofixable lint rules and formatting.
format: setup
	.venv/bin/ruff check --fix src tests benchmarks
	.venv/bin/ruff format src tests benchmarks
