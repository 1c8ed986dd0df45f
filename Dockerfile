FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MOODQ_CACHE_DIR=/cache
# CPU torch first, so nothing later pulls the CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY producer ./producer
COPY prompts ./prompts
RUN pip install .
RUN useradd --create-home moodq && mkdir -p /cache && chown moodq /cache
USER moodq
ENTRYPOINT ["moodq"]
CMD ["worker"]
