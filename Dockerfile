# The one image of the control plane (`ranvier run --role ...`) and of model servers (`ranvier
# serve`): `make image` builds it. Not built in CI (no container engine there): review changes
# by reading, and build it yourself before a release.
#
# Stage 1 builds a virtualenv from the pinned constraints (wheels only where possible; a
# compiler is available for the rare sdist). Stage 2 copies only that virtualenv onto a fresh
# slim base: no compiler, no pip cache, no sources but the installed package.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/ranvier
ENV PATH=/opt/ranvier/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY events events
COPY sensors sensors
COPY executors executors
COPY ranvier ranvier
# EXTRAS=showcase adds torch (the CPU build pinned in constraints.txt) for the GPT-2 demo.
ARG EXTRAS=""
RUN pip install --upgrade pip \
 && pip install -c constraints.txt ".${EXTRAS:+[$EXTRAS]}" \
 && ranvier version

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/ranvier /opt/ranvier
ENV PATH=/opt/ranvier/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    RANVIER_STATE_DIR=/tmp/ranvier
# The uid the manifests run as (runAsUser: 10001); no home, no shell login, no write access.
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin ranvier
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 9100
ENTRYPOINT ["ranvier"]
CMD ["--help"]
