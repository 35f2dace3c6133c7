# vae-serve server image: the serving runtime only (no torch), the bundled default model, non-root.
#   docker build -t vae-serve .                                   # CPU: onnxruntime
#   docker build -t vae-serve:gpu --build-arg ORT_EXTRAS=cuda,cudnn .   # onnxruntime-gpu + CUDA/cuDNN wheels
FROM python:3.11-slim-bookworm

# Empty: the CPU wheel (onnxruntime), not the server extra's onnxruntime-gpu, whose CUDA kernels
# would triple the image for nothing on a CPU node. "cuda,cudnn": onnxruntime-gpu with NVIDIA's
# CUDA and cuDNN libraries from PyPI; the host then needs the NVIDIA driver and container toolkit
# (see docker-compose.gpu.yml).
ARG ORT_EXTRAS=""
ARG ORT_VERSION=1.31.1

# MALLOC_MMAP_THRESHOLD_: glibc serves buffers of 1 MiB and more (large messages, about four
# copies of each request) straight from mmap and unmaps them when freed, instead of raising its
# threshold and keeping them in the heap; with the server's own malloc_trim after large requests,
# RSS went back to ~300 MB after bursts of 16 x 25 MB requests (bench/memory.py), not 1.1-1.6 GB.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MALLOC_MMAP_THRESHOLD_=1048576

# The source is bind-mounted for the install, not copied: a COPY layer would stay in the image
# after `rm`. rw: pip builds in the tree; what it writes there is thrown away with the mount.
# The project and its server extra's dependencies (bounded in pyproject.toml), read from
# pyproject.toml with ONNX Runtime's package swapped for the one chosen above. The package's own
# copy of the default model goes: /models holds it (11 MB less).
WORKDIR /src
# hadolint ignore=DL3013
RUN --mount=type=bind,target=/src,rw \
    python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(r for r in p['dependencies'] + p['optional-dependencies']['server'] \
if not r.startswith('onnxruntime')))" > /tmp/requirements.txt \
    && if [ -n "$ORT_EXTRAS" ]; then ort="onnxruntime-gpu[$ORT_EXTRAS]==$ORT_VERSION"; \
       else ort="onnxruntime==$ORT_VERSION"; fi \
    && pip install --no-deps . \
    && pip install -r /tmp/requirements.txt "$ort" \
    && rm /tmp/requirements.txt \
    && cp -r models /models \
    && python -P -c "import pathlib, shutil, vae_serve.models as m; \
[shutil.rmtree(d) for d in pathlib.Path(next(iter(m.__path__))).iterdir() if d.is_dir()]" \
    && useradd --system --uid 10001 --no-create-home vae \
    && chown -R 10001:10001 /models

WORKDIR /
USER 10001

# /models starts with the bundled model; mount a volume there to serve (and hot-load) others.
ENV VAE_HOST=0.0.0.0 \
    VAE_PORT=50051 \
    VAE_HTTP_PORT=8000 \
    VAE_METRICS_PORT=8002 \
    VAE_MODEL_REPOSITORY=/models \
    VAE_DRAIN_GRACE_S=10
EXPOSE 50051 8000 8002

HEALTHCHECK --interval=10s --timeout=4s --start-period=30s --retries=3 \
    CMD ["vae-client", "--target", "127.0.0.1:50051", "--timeout", "3", "--retries", "0", "health"]
# vae-serve drains on SIGTERM within VAE_DRAIN_GRACE_S; give it longer than that to exit
# (docker stop -t 15 / compose stop_grace_period / Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
CMD ["vae-serve"]
