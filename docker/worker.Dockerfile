# The rollout worker on vLLM's official image (CUDA, vLLM and torch included).
#   docker build -f docker/worker.Dockerfile -t looper-worker .
# TRL 1.16's vllm extra pins vllm<=0.31.0; the worker uses vLLM's offline LLM.generate only.
FROM vllm/vllm-openai:v0.31.0

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --create-home --uid 10001 looper
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared_schemas ./shared_schemas
COPY looper_common ./looper_common
COPY rollout_worker ./rollout_worker
COPY trainer ./trainer
COPY looper ./looper
# vLLM's image brings torch and transformers; add only what the worker needs beside them
RUN pip install --no-deps . && pip install pydantic==2.14.3 httpx==0.28.1 pyyaml==6.0.3 rich==15.0.0 tqdm==4.70.1 peft==0.21.2

USER looper
ENTRYPOINT ["looper"]
CMD ["rollouts", "--config", "/config/rollouts.yaml"]
