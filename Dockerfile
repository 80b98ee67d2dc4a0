# One image for the API (the default command), the Celery worker (`lethe worker`) and the
# one-shot migration (`lethe db upgrade`); docker-compose.yml runs all three.
#
#   docker build -t lethe .                       # CPU torch, pinned as in the Makefile
#   docker build -t lethe:cuda --build-arg TORCH_INDEX_URL=https://pypi.org/simple .
#                                                 # PyPI's Linux torch is the CUDA build
#   docker build --network host --build-arg WHEELHOUSE=http://127.0.0.1:8731/ -t lethe .
#                                                 # offline: pip --no-index from a wheelhouse
#
# Cache: the dependencies are installed from pyproject.toml's list before any code is copied,
# so a code change rebuilds the last three layers only (source, install, user). Metadata comes
# before the big layers because every step copies its parent's tree on some storage drivers
# (vfs), and copying the base is cheaper than copying torch.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# Only files, no filesystem: COPY into scratch costs nothing but the files themselves.
FROM scratch AS manifests
COPY docker/requirements.py pyproject.toml /src/
COPY client/pyproject.toml /src/client/

FROM scratch AS source
COPY pyproject.toml README.md /src/
COPY client /src/client
COPY migrations /src/migrations
COPY worker /src/worker
COPY app /src/app

FROM ${BASE_IMAGE} AS base
# A venv, not the system interpreter: Debian's python3 refuses system-wide pip installs
# (PEP 668), and one directory is all the runtime stage copies from the dependency stage.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv

FROM base AS deps
# Pinned as in the Makefile; the CPU build unless TORCH_INDEX_URL names another index.
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# A pip --find-links location (a URL, or a directory inside this stage) holding every wheel:
# when set, nothing is fetched from an index (--no-index).
ARG WHEELHOUSE=
# The dependency list alone is this stage's input, so that editing pyproject.toml's other
# tables (ruff, pytest) or the code leaves this layer cached.
COPY --from=manifests /src /tmp/manifests
# torch first, from its own index, so that resolving the rest never swaps in another build;
# TORCH_SPEC again in the second call keeps pip from replacing it. setuptools builds the
# project in the runtime stage without build isolation (so without an index there).
RUN set -eu; \
    python3 /tmp/manifests/requirements.py /tmp/manifests/pyproject.toml \
      /tmp/manifests/client/pyproject.toml > /tmp/requirements.txt; \
    if [ -n "$WHEELHOUSE" ]; then \
      pip install --no-index --find-links "$WHEELHOUSE" "$TORCH_SPEC"; \
      pip install --no-index --find-links "$WHEELHOUSE" "$TORCH_SPEC" \
        -r /tmp/requirements.txt "setuptools>=77"; \
    else \
      pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"; \
      pip install "$TORCH_SPEC" -r /tmp/requirements.txt "setuptools>=77"; \
    fi; \
    rm -rf /tmp/manifests /tmp/requirements.txt; \
    python -c "import torch; print('torch', torch.__version__)"

FROM base AS runtime
ENV LETHE_HOME=/var/lib/lethe \
    LETHE_STORAGE_URL=file:///var/lib/lethe/blobs \
    LETHE_RECEIPT_KEY_FILE=/var/lib/lethe/keys/receipt-key.pem
# Every path a volume is mounted on exists in the image and belongs to the service's user:
# Docker initialises an empty named volume from the image's directory, owner included, so
# the non-root processes can write their blobs and the receipt key.
RUN useradd --system --uid 1000 --user-group --home-dir /var/lib/lethe --no-create-home \
      --shell /usr/sbin/nologin lethe \
    && mkdir -p /var/lib/lethe/blobs /var/lib/lethe/keys \
    && chown -R lethe:lethe /var/lib/lethe \
    && chmod 0700 /var/lib/lethe/keys
WORKDIR /var/lib/lethe
EXPOSE 8000
# The API's check; docker-compose.yml gives the worker its own (`lethe health worker`).
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD ["lethe", "health", "api", "--port", "8000"]
CMD ["lethe", "serve", "--host", "0.0.0.0", "--port", "8000"]
COPY --from=deps /opt/venv /opt/venv
COPY --from=source /src /opt/lethe
# Installed as root into the venv, which the service's user cannot change. --no-deps: every
# dependency is in place; --no-build-isolation: setuptools too.
RUN pip install --no-deps --no-build-isolation /opt/lethe/client /opt/lethe \
    && rm -rf /opt/lethe/build /opt/lethe/client/build /opt/lethe/*.egg-info \
      /opt/lethe/client/src/*.egg-info \
    && lethe --version
USER lethe
