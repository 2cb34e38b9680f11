# The vatic image: vatic-api, vatic-worker and vaticctl on Debian slim, with the default configs
# in /etc/vatic, the demo model in /usr/share/vatic/models and ONNX Runtime's library (for the
# onnxruntime engine, docs/engines.md) in /usr/local/lib/vatic. docker-compose.yml builds it.
# /certs and /certs-ca are where the compose file mounts its certificate volumes: Docker gives
# a new named volume the owner and mode of the folder it is mounted on, so the user vatic
# (uid and gid 10001) writes the certificates and reads them back, and group 10001 (which
# Prometheus joins) may enter /certs.
FROM rust:1.95-bookworm AS build
# The image's own toolchain, in place of rust-toolchain.toml's channel (which would download one).
ENV RUSTUP_TOOLCHAIN=1.95.0
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
    && mkdir -p /out \
    && cp target/release/vatic-api target/release/vatic-worker target/release/vaticctl /out/

# libonnxruntime.so from the onnxruntime wheel on PyPI, as scripts/install-onnxruntime.sh does
# on a developer machine.
FROM python:3.11-slim-bookworm AS onnxruntime
COPY scripts/install-onnxruntime.sh /install-onnxruntime.sh
RUN /install-onnxruntime.sh /out

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 vatic \
    && useradd --system --uid 10001 --gid vatic --home-dir /var/lib/vatic vatic \
    && mkdir -p /var/lib/vatic/data /var/log/vatic /certs /certs-ca \
    && chown -R vatic:vatic /var/lib/vatic /var/log/vatic /certs /certs-ca \
    && chmod 0750 /certs \
    && chmod 0700 /certs-ca
COPY --from=build /out/ /usr/local/bin/
COPY --from=onnxruntime /out/libonnxruntime.so /usr/local/lib/vatic/libonnxruntime.so
ENV ORT_DYLIB_PATH=/usr/local/lib/vatic/libonnxruntime.so
COPY config/ /etc/vatic/
COPY models/ /usr/share/vatic/models/
USER vatic
# Relative paths in the settings (data/uploads, data/spool, data/cache) live here.
WORKDIR /var/lib/vatic
EXPOSE 8080 8081 9180 9181
CMD ["vatic-api", "--config", "/etc/vatic/api.toml"]
