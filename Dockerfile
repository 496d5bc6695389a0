# The image Kubernetes pods (cluster.kubernetes.image) and SLURM jobs (through Apptainer/Singularity) run:
# cerberus-batch with its SLURM and Kubernetes extras; the scheduler and workers start as `dask scheduler` and
# `dask worker` inside it. Slides, model weights and results come in as volumes, none is baked in.
#   docker build -t cerberus-batch:0.1.0 .
# Any Debian bookworm base with Python >= 3.10 does (e.g. one made by debootstrap: --build-arg BASE=...).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/cerberus-batch
COPY pyproject.toml README.md ./
COPY cerberus_batch ./cerberus_batch
# torch from PyPI carries its CUDA libraries: the same image serves GPU and CPU workers.
RUN python -m pip install ".[slurm,kubernetes]"
# The smoke test of the build: the command line loads, the stain model runs without weights.
RUN cerberus-batch --version && python -c "import cerberus_batch.pipeline.run, cerberus_batch.cluster.kubernetes"
# Not root: the pods and jobs write results as an ordinary user.
RUN useradd --create-home --uid 1000 cerberus
USER cerberus
WORKDIR /home/cerberus
