# The vatic image: vatic-api, vatic-worker and vaticctl on Debian slim, with the default configs
# in /etc/vatic and the demo model in /usr/share/vatic/models. docker-compose.yml builds it.
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

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/vatic vatic \
    && mkdir -p /var/lib/vatic/data /var/log/vatic \
    && chown -R vatic:vatic /var/lib/vatic /var/log/vatic
COPY --from=build /out/ /usr/local/bin/
COPY config/ /etc/vatic/
COPY models/ /usr/share/vatic/models/
USER vatic
# Relative paths in the settings (data/uploads, data/spool, data/cache) live here.
WORKDIR /var/lib/vatic
EXPOSE 8080 8081 9180 9181
CMD ["vatic-api", "--config", "/etc/vatic/api.toml"]
