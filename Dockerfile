FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MOODQ_CACHE_DIR=/cache
# torch first, so nothing later resolves another build. Pass TORCH_INDEX_URL (a CPU-only wheel
# index) at build time to avoid the CUDA packages: docker compose build --build-arg TORCH_INDEX_URL=...
ARG TORCH_INDEX_URL=""
RUN pip install torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY producer ./producer
COPY prompts ./prompts
RUN pip install .
RUN useradd --create-home moodq && mkdir -p /cache && chown moodq /cache
USER moodq
ENTRYPOINT ["moodq"]
CMD ["worker"]
