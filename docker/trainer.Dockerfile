# The trainer: SFT, preferences, DPO, online RL, merge, evaluation and the pipeline.
#   docker build -f docker/trainer.Dockerfile -t looper-trainer .
# PyPI's torch 2.13.0 wheel for Linux x86_64 carries its CUDA libraries.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --create-home --uid 10001 looper
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared_schemas ./shared_schemas
COPY looper_common ./looper_common
COPY rollout_worker ./rollout_worker
COPY trainer ./trainer
COPY looper ./looper
# The torch build is an argument: PyPI's (CUDA) by default; `make image-test` passes a CPU wheel
ARG TORCH_INSTALL="torch==2.13.0"
RUN pip install $TORCH_INSTALL && pip install '.[train]'

USER looper
ENTRYPOINT ["looper"]
CMD ["pipeline", "--config", "/config/pipeline.yaml"]
