# The public stub service: the same API with correctness-only scoring. It is built from the public
# files alone (no Regime W arms, scoring or embeddings), exactly what an open-source release ships.
#   docker build -f docker/stub.Dockerfile -t looper-stub .
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --create-home --uid 10001 looper
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared_schemas ./shared_schemas
COPY looper_common ./looper_common
COPY looper ./looper
COPY rollout_worker ./rollout_worker
COPY trainer ./trainer
COPY reward_service/__init__.py reward_service/app.py reward_service/settings.py reward_service/scorer.py reward_service/stub.py reward_service/workers.py ./reward_service/
RUN pip install '.[service]'

USER looper
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"
ENTRYPOINT ["looper", "serve", "--stub", "--host", "0.0.0.0", "--port", "8000", "--token-file", "/run/secrets/looper_service_token"]
