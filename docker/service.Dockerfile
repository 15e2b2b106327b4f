# The closed Regime W reward service. Build from the repository root:
#   docker build -f docker/service.Dockerfile -t looper-service .
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1
RUN useradd --create-home --uid 10001 looper
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared_schemas ./shared_schemas
COPY looper_common ./looper_common
COPY reward_service ./reward_service
COPY looper ./looper
COPY rollout_worker ./rollout_worker
COPY trainer ./trainer
RUN pip install '.[service]'

USER looper
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"
# The token is read from a compose/swarm secret file, never from the command line or the image.
ENTRYPOINT ["looper", "serve", "--host", "0.0.0.0", "--port", "8000", "--token-file", "/run/secrets/looper_service_token"]
