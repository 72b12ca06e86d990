# `make demo` runs the built-in demo; `make test` runs the test suite. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))

.PHONY: setup setup-spark40 test-spark40 demo test test-slow test-all bench bench-scale bench-stream bench-smoke photos examples docker-test compose-demo local-cluster-start local-cluster-stop clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@bash infra/check-java.sh
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[local,test,databricks,mlflow,engines]"
	@touch $@

# Databricks Runtime 17.3 LTS runs Spark 4.0: the code that talks to Spark's APIs (the stages' and the sparkdl
# compat layer's quick tests, and the stream's driver-kill test) on PySpark 4.0.x too, in .venv-spark40, which
# holds only that PySpark and reads everything else from .venv (a .pth line), so it costs one download.
SPARK40 ?= 4.0.1
VENV40 := .venv-spark40

setup-spark40: setup $(VENV40)/.installed

$(VENV40)/.installed: $(VENV)/.installed
	python3 -m venv $(VENV40)
	$(VENV40)/bin/python -c "import site; print('import site; site.addsitedir(%r)' % '$(abspath $(VENV))/lib/python%d.%d/site-packages' % __import__('sys').version_info[:2])" \
		> "$$($(VENV40)/bin/python -c 'import site; print(site.getsitepackages()[0])')/zz-main-venv.pth"
	$(VENV40)/bin/python -m pip install -q --no-deps "pyspark==$(SPARK40)"
	@touch $@

test-spark40: setup-spark40 photos
	PYSPARK_PYTHON=$(abspath $(VENV40))/bin/python PYSPARK_DRIVER_PYTHON=$(abspath $(VENV40))/bin/python \
		$(VENV40)/bin/python -c "import pyspark; assert pyspark.__version__.startswith('4.0'), pyspark.__version__"
	PYSPARK_PYTHON=$(abspath $(VENV40))/bin/python PYSPARK_DRIVER_PYTHON=$(abspath $(VENV40))/bin/python \
		$(VENV40)/bin/python -m pytest -m "not slow" tests/stages tests/compat
	PYSPARK_PYTHON=$(abspath $(VENV40))/bin/python PYSPARK_DRIVER_PYTHON=$(abspath $(VENV40))/bin/python \
		$(VENV40)/bin/python -m pytest -m slow tests/stages/test_stream.py -k driver_killed

demo: setup
	$(VENV)/bin/sparkvision run

photos:
	@bash tests/fetch_photos.sh .cache/photos

# The suite people run often (a few minutes); test-slow: the standalone cluster with a worker killed, the
# football experiment, the sparkdl recipes, all three EfficientNet-Lite checks (CI runs both).
test: setup photos
	$(VENV)/bin/pytest -m "not slow" --durations=10

test-slow: setup photos
	$(VENV)/bin/pytest -m slow --durations=12

test-all: setup photos
	$(VENV)/bin/pytest

# Featurization speed, tuning cost and memory in one run (bench/README.md); writes bench/results/ and
# docs/performance.md. bench-smoke: the same code paths on a few images (CI); its figures mean nothing.
bench: setup
	$(PY) -m bench featurize --models efficientnet_lite0,InceptionV3 --repeats 2 --readme

# 50,000 generated images through load -> featurize -> train against 2,000: throughput and peak RSS.
bench-scale: setup
	$(PY) -m bench featurize --scale 50000 --readme

# sparkvision stream: latency with a processing-time trigger, and a 10,000-file backlog against batch predict.
bench-stream: setup
	$(PY) -m bench.stream --readme

bench-smoke: setup
	$(PY) -m bench featurize --quick --out .cache/bench-smoke
	$(PY) -m bench featurize --quick --scale 60 --out .cache/bench-smoke
	$(PY) -m bench.stream --quick --out .cache/bench-smoke

# Both original sparkdl recipes on sparkvision (examples/); the football one needs ../shared.
examples: setup
	$(PY) examples/messi_ronaldo.py
	$(PY) examples/digits_multiclass.py

# The image, built offline (own dockerd, debootstrap base, CA as a BuildKit secret), tests run inside it,
# then the compose cluster (master + 2 workers) runs the demo. Needs root.
docker-test:
	bash infra/docker/build-offline.sh --test --compose-demo

# A standalone master + 2 workers on loopback, without Docker (sizes from infra/clusters/ci.yml).
local-cluster-start: setup
	PATH=$(abspath $(VENV))/bin:$$PATH bash infra/standalone/local-cluster.sh start .cache/local-cluster

local-cluster-stop:
	bash infra/standalone/local-cluster.sh stop .cache/local-cluster

clean:
	rm -rf runs .pytest_cache spark-warehouse
