# One image for tests, jobs and a standalone Spark cluster (see docs/docker-standalone.md).
#
#   docker build -t sparkvision .                      # runtime image (connected machine)
#   docker build --target test -t sparkvision:test .   # + pytest, chispa and tests/
#   docker run --rm sparkvision sparkvision run        # the built-in demo
#
# Build args:
#   BASE_IMAGE     Debian bookworm with Python 3.11 (python3 -m venv must work). infra/docker/build-offline.sh
#                  passes a debootstrap-built one; the default is the public python slim image.
#   KERAS_WEIGHTS  space-separated Keras models (e.g. "InceptionV3 ResNet50") whose ImageNet weights are
#                  downloaded into the image at build time, so clusters never download at run time.
# A private CA for pip/downloads during the build goes in as a BuildKit secret, never as a layer:
#   DOCKER_BUILDKIT=1 docker build --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt .
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 LC_ALL=C.UTF-8
# procps: Spark's scripts use ps; tini: reaps executors' children and forwards signals.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps tini \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /opt/java
ENV JAVA_HOME=/opt/java

# ---- dependencies: the only stage with pip and network access -------------------------------------
FROM base AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
COPY constraints.txt pyproject.toml /src/
# Third-party packages first (pinned by constraints.txt): this layer survives edits to src/.
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python -c "import tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; \
x = p['optional-dependencies']; print('\n'.join(p['dependencies'] + x['local'] + x['lite12'] + x['databricks'] + x['engines']))" \
    > /tmp/requirements.txt \
 && pip install -c /src/constraints.txt -r /tmp/requirements.txt
COPY README.md /src/
COPY src /src/src
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && pip wheel --no-deps -w /dist /src \
 && pip install --no-deps /dist/sparkvision-*.whl \
 && ln -s "$(python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')" /opt/venv/spark
ARG KERAS_WEIGHTS=""
RUN --mount=type=secret,id=pip_ca \
    mkdir -p /opt/sparkvision/weights \
 && if [ -n "$KERAS_WEIGHTS" ]; then \
      if [ -s /run/secrets/pip_ca ]; then export SSL_CERT_FILE=/run/secrets/pip_ca; fi; \
      sparkvision weights --cache-dir /opt/sparkvision/weights $KERAS_WEIGHTS; \
    fi \
 && SPARKVISION_CACHE=/opt/sparkvision/weights TF_CPP_MIN_LOG_LEVEL=3 \
    python -m sparkvision.ml.engines prepare efficientnet_lite0 efficientnet_lite1 efficientnet_lite2

# Test-only packages, installed beside the venv (not into it) so the runtime venv stays as shipped.
FROM deps AS test-deps
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && pip install -c /src/constraints.txt --target /opt/test-deps pytest chispa "moto[server]"

# The shipped venv: no pip, setuptools or wheel left in it.
FROM deps AS venv
RUN pip uninstall -y -q pip setuptools wheel 2>/dev/null; rm -rf /opt/venv/bin/pip*

# ---- runtime ---------------------------------------------------------------------------------------
FROM base AS runtime
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash spark \
 && mkdir -p /work /opt/sparkvision && chown spark:spark /work
COPY --from=venv /opt/venv /opt/venv
COPY --from=venv /opt/sparkvision/weights /opt/sparkvision/weights
COPY --from=venv /dist /opt/sparkvision/dist
COPY infra/clusters /opt/sparkvision/infra/clusters
COPY infra/standalone /opt/sparkvision/infra/standalone
COPY examples /opt/sparkvision/examples
COPY infra/docker/entrypoint.sh /usr/local/bin/sparkvision-entrypoint
ENV PATH=/opt/venv/bin:$PATH \
    SPARK_HOME=/opt/venv/spark \
    PYSPARK_PYTHON=/opt/venv/bin/python \
    PYSPARK_DRIVER_PYTHON=/opt/venv/bin/python \
    SPARKVISION_CACHE=/opt/sparkvision/weights \
    SPARKVISION_HOME=/opt/sparkvision \
    KERAS_BACKEND=tensorflow \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONUNBUFFERED=1
# The commit the image was built from (MLflow runs started in it are tagged with it); last, so that a new
# commit rebuilds no earlier layer.
ARG SPARKVISION_GIT_COMMIT=""
ENV SPARKVISION_GIT_COMMIT=$SPARKVISION_GIT_COMMIT
USER spark
WORKDIR /work
# 8080: master UI, 7077: master, 8081: worker UI, 4040: driver UI
EXPOSE 7077 8080 8081 4040
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/sparkvision-entrypoint"]
CMD ["help"]

# ---- test: runtime + pytest/chispa + tests/ ---------------------------------------------------------
FROM runtime AS test
USER root
COPY --from=test-deps /opt/test-deps /opt/test-deps
RUN python -c "import site; print(site.getsitepackages()[0])" | xargs -I{} sh -c 'echo /opt/test-deps > {}/test-deps.pth' \
 && ln -s /opt/test-deps/bin/pytest /usr/local/bin/pytest 2>/dev/null || true
COPY pyproject.toml bundle.yml README.md /opt/sparkvision/
COPY infra/docker /opt/sparkvision/infra/docker
COPY jobs /opt/sparkvision/jobs
COPY infra/databricks /opt/sparkvision/infra/databricks
COPY tests /opt/sparkvision/tests
COPY bench /opt/sparkvision/bench
COPY docs/*.md /opt/sparkvision/docs/
RUN chown -R spark:spark /opt/sparkvision/tests
USER spark
CMD ["test"]
