# bhd: BlindHarmonyDiff as a BIDS App.
#
#   docker build -t bhd:0.1.0 .                                          # CUDA build of torch (default)
#   docker build --build-arg TORCH_VARIANT=cpu \
#                --build-arg BHD_IMAGE_TAG=bhd:0.1.0-cpu -t bhd:0.1.0-cpu .   # CPU-only torch
#
#   mkdir -p out work      # before `docker run`: else the daemon creates them, owned by root
#   docker run --rm --read-only --tmpfs /tmp --user "$(id -u):$(id -g)" --network none \
#       -v "$PWD/bids:/data:ro" -v "$PWD/out:/out" -v "$PWD/work:/work" \
#       bhd:0.1.0 /data /out participant -w /work
#
# Needs only PyPI and a Debian mirror (no Docker Hub: docker/make_base_image.sh builds the base image
# with debootstrap). See docker/README.md. Runs as user bhd (uid 1000) by default and as any user id
# (--user), on a read-only root filesystem, offline.

ARG BASE_IMAGE=debian:bookworm-slim

# ------------------------------------------------------------------------------------------- build
FROM ${BASE_IMAGE} AS build

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# Extra CAs of the build host (TLS-intercepting proxies), build stage only: docker/ca-certificates/README.md
COPY docker/ca-certificates/ /usr/local/share/ca-certificates/
RUN update-ca-certificates

RUN python3 -m venv /opt/venv
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_INDEX_URL=${PIP_INDEX_URL} \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_CONSTRAINT=/tmp/constraints.txt

# torch first: the largest layer, and independent of the package's code.
ARG TORCH_VARIANT=cuda
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY docker/constraints.txt docker/install_torch.sh /tmp/
COPY docker/wheels/ /tmp/wheels/
RUN TORCH_VARIANT=${TORCH_VARIANT} TORCH_VERSION=${TORCH_VERSION} TORCH_CPU_INDEX_URL=${TORCH_CPU_INDEX_URL} \
    sh /tmp/install_torch.sh /tmp/wheels

# The dependencies (setup.cfg's install_requires) and the BIDS validator (deno): they change rarely, so
# this layer, and the image's copy of /opt/venv, stay cached when only the package's code changes.
COPY setup.cfg /tmp/setup.cfg
RUN python -c "import configparser; c = configparser.ConfigParser(); c.read('/tmp/setup.cfg'); \
print(c['options']['install_requires'])" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt bids-validator-deno \
 && python -c "import sysconfig; print(sysconfig.get_path('purelib', vars={'base': '/opt/bhd'}))" \
      > "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/bhd.pth"

# Not needed to run (about 0.2 GB): torch's C++ test binaries and headers (C++ extensions and
# torch.compile's C++ code generation need a compiler, which the image does not have).
RUN cd /opt/venv/lib/python3*/site-packages/torch \
 && rm -rf test include \
 && find bin -mindepth 1 ! -name torch_shm_manager -exec rm -rf {} +

# matplotlib's font list, so that runs do not rebuild it (docker/entrypoint.sh seeds MPLCONFIGDIR with it).
RUN MPLCONFIGDIR=/opt/bhd/matplotlib python -c "import matplotlib.font_manager" \
 && ls /opt/bhd/matplotlib/fontlist-*.json

# The package with its data files (bhd_app/data: model and card) into /opt/bhd (found through bhd.pth);
# no network needed (the venv has setuptools).
ARG BHD_VERSION=0.1.0
COPY setup.cfg pyproject.toml README.md /src/
COPY bhd_app /src/bhd_app
RUN pip install --no-deps --no-build-isolation --prefix /opt/bhd /src \
 && pip check \
 && cd / && python -c "import bhd_app, sys; v = bhd_app.__version__; \
sys.exit(0 if v == '${BHD_VERSION}' else f'BHD_VERSION=${BHD_VERSION} but bhd_app.__version__ is {v}: pass --build-arg BHD_VERSION={v}')" \
 && test -x /opt/bhd/bin/bhd-app && test -x /opt/bhd/bin/bhd-train
COPY docker/entrypoint.sh /opt/bhd/entrypoint.sh

# ----------------------------------------------------------------------------------------- runtime
FROM ${BASE_IMAGE}

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
 && mkdir -p /data /out /work \
 && chmod 1777 /out /work

COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/bhd /opt/bhd

# (declared here, not earlier: a new BUILD_DATE voids the cache of the steps after it; docker/build.sh
# passes the date of the last commit, so that rebuilding an unchanged checkout gives the same image)
ARG TORCH_VARIANT=cuda
ARG TORCH_VERSION=2.13.0
ARG BHD_VERSION=0.1.0
ARG BHD_IMAGE_TAG=bhd:${BHD_VERSION}
ARG BUILD_DATE=unknown
ARG VCS_REF=unknown
ARG BASE_IMAGE=debian:bookworm-slim

LABEL org.opencontainers.image.title="bhd" \
      org.opencontainers.image.description="BlindHarmonyDiff as a BIDS App: blind 3D harmonization of T1-weighted brain MRI" \
      org.opencontainers.image.version="${BHD_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      org.opencontainers.image.ref.name="${BHD_IMAGE_TAG}" \
      bhd.torch.version="${TORCH_VERSION}" \
      bhd.torch.variant="${TORCH_VARIANT}"

# Run-time state goes to /tmp (mount a tmpfs there with --read-only); docker/entrypoint.sh moves any of
# these that is not writable under TMPDIR or the work directory. No network: nipype's version check
# (etelemetry) and deno's update check are off, and nothing is downloaded.
ENV PATH=/opt/bhd/bin:/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    BHD_CONTAINER_TAG=${BHD_IMAGE_TAG} \
    TMPDIR=/tmp \
    HOME=/tmp/bhd-home \
    XDG_CACHE_HOME=/tmp/bhd-home/.cache \
    XDG_CONFIG_HOME=/tmp/bhd-home/.config \
    MPLCONFIGDIR=/tmp/bhd-home/.config/matplotlib \
    MPLBACKEND=Agg \
    NIPYPE_CONFIG_DIR=/tmp/bhd-home/.nipype \
    NIPYPE_NO_ET=1 \
    NO_ET=1 \
    TORCH_HOME=/tmp/bhd-home/.cache/torch \
    TRITON_CACHE_DIR=/tmp/bhd-home/.cache/triton \
    NUMBA_CACHE_DIR=/tmp/bhd-home/.cache/numba \
    DENO_DIR=/tmp/bhd-home/.cache/deno \
    DENO_NO_UPDATE_CHECK=1 \
    DENO_NO_PROMPT=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Not root by default; `--user UID:GID` still runs it as anyone (docker/entrypoint.sh needs no passwd entry).
RUN useradd --uid 1000 --user-group --no-create-home --home-dir /tmp/bhd-home --shell /usr/sbin/nologin bhd
USER 1000:1000
WORKDIR /work
ENTRYPOINT ["/opt/bhd/entrypoint.sh"]
CMD ["--help"]
