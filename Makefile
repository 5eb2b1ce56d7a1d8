PY := .venv/bin/python
.PHONY: quickstart test setup
setup: .venv/.installed
.venv/.installed: pyproject.toml
	test -d .venv || python3 -m venv .venv
	.venv/bin/pip install -q -e '.[test]'
	@test -d /usr/share/datasets/fashion-mnist || (apt-get install -y -qq dataset-fashion-mnist || echo "could not install dataset-fashion-mnist")
	touch $@
quickstart: setup
	$(PY) -c "from sweeplab import config, engine; c = config.load(None, ['data.name=fashion_mnist', 'train.epochs=1', 'data.batch_size=128', 'optim.lr=0.1', 'augment.hflip=true']); print(engine.fit(c))"
test: setup
	$(PY) -m pytest -q
