# syntax=docker/dockerfile:1
# The cloud service as a container: `hybrid-vision serve` on port 8080, as a non-root user.
#
#   docker build -t hybrid-vision .                                     # the bundle mounted at /models/bundle
#   docker run -p 8080:8080 -v $PWD/bundles/digits:/models/bundle:ro hybrid-vision
#   docker build -t hybrid-vision:digits --target baked --build-arg BUNDLE=bundles/digits .   # the bundle baked in
#   docker build -t hybrid-vision:ray --build-arg EXTRAS=cloud,scale .  # with Ray Serve, for KubeRay (deploy/)
#
# Settings come from HV_* variables (HV_API_KEYS, HV_MAX_BATCH_SIZE, ...) or flags after the image name, e.g.
# `docker run ... hybrid-vision /models/bundle --max-batch-size 64`.
ARG PYTHON=3.11

# --- build: the package and its dependencies into a virtualenv ----------------------------------------
FROM python:${PYTHON}-slim AS build
ARG EXTRAS=cloud
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/hv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edge_sdk ./edge_sdk
COPY cloud ./cloud
RUN /opt/hv/bin/pip install ".[${EXTRAS}]"

# --- runtime: the virtualenv alone, no compilers, no sources, a user without privileges -----------------
FROM python:${PYTHON}-slim AS runtime
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin hv && mkdir -p /models/bundle
COPY --from=build /opt/hv /opt/hv
ENV PATH=/opt/hv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    HV_HOST=0.0.0.0 \
    HV_PORT=8080
USER 10001
WORKDIR /home/hv
EXPOSE 8080
# Docker's own probe (Kubernetes uses the manifests' probes): ready once the model is warmed up.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; u = 'http://127.0.0.1:%s/v2/health/ready' % os.environ.get('HV_PORT', '8080'); sys.exit(0 if urllib.request.urlopen(u, timeout=2).status == 200 else 1)"]
ENTRYPOINT ["hybrid-vision", "serve"]
CMD ["/models/bundle"]

# --- baked: the same image with a bundle inside (--target baked --build-arg BUNDLE=path/in/context) ----
FROM runtime AS baked
ARG BUNDLE
COPY --chown=10001:10001 ${BUNDLE} /models/bundle

# --- the default target: the bundle is mounted at /models/bundle (a volume, or KServe's /mnt/models) ---
FROM runtime AS mounted
