# vae-train image: the trainer with torch, and Debian's Fashion-MNIST. Writes a model version
# into the repository mounted at /models (the compose profile "train" does this).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Debian stable's data package: its version is whatever bookworm ships, which is the point.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY vae_serve ./vae_serve
COPY server ./server
COPY client ./client
COPY training ./training
COPY models ./models
# The project and its train extra (torch pinned there).
# hadolint ignore=DL3013
RUN pip install ".[train]" && rm -rf /src && useradd --system --uid 10001 --create-home vae \
    && mkdir /models && chown 10001:10001 /models

USER 10001
WORKDIR /home/vae
ENTRYPOINT ["vae-train", "--model-repository", "/models", "--checkpoint", "/home/vae/checkpoints/last.pt"]
