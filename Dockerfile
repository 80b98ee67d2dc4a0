# One image for the API and the worker. The CUDA build of torch comes from the default index;
# pass --build-arg TORCH_SPEC=... to pin another build.
FROM python:3.11-slim

ARG TORCH_SPEC="torch>=2.10"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    LETHE_HOME=/var/lib/lethe

RUN useradd --create-home --uid 1000 lethe && mkdir -p /var/lib/lethe && chown lethe /var/lib/lethe
WORKDIR /opt/lethe

RUN pip install "${TORCH_SPEC}"
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
COPY client ./client
RUN pip install ./client .

USER lethe
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["lethe", "serve", "--host", "0.0.0.0", "--port", "8000"]
