# livedesk container image (not built on the development machines: they have
# no Docker engine; kept simple and checked by reading).
#
# The container expects DATABASE_URL pointing at PostgreSQL (a direct or
# session-pooled connection to the primary: LISTEN does not work through
# pgbouncer's transaction mode). The postgresql package is included so the
# embedded default also works when DATABASE_URL is unset (data in /data).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# bench/ is a workspace member: cargo needs its manifest even to build only
# the server (`--bin livedesk` compiles none of it).
COPY bench ./bench
COPY src ./src
COPY sql ./sql
COPY web ./web
# The console's client module is served from its one source, the client package.
COPY clients/js/livedesk-client.js ./clients/js/
RUN cargo build --release --locked --bin livedesk

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates postgresql \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/livedesk /usr/local/bin/livedesk
RUN useradd --system --home /data livedesk && mkdir -p /data && chown livedesk /data
USER livedesk
WORKDIR /data
ENV LIVEDESK_BIND=0.0.0.0:8080 \
    LIVEDESK_DATA_DIR=/data/livedesk-data \
    RUST_LOG=info
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/livedesk"]
CMD ["serve"]
