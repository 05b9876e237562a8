# Build:  docker build -t gateway .
# Run:    docker run --rm -p 8443:8443 -p 8080:8080 gateway
# Mount your own config at /etc/gateway/gateway.toml (and certificates beside it) for
# production. The admin API stays on the container's loopback unless your config says
# otherwise (admin.bind + admin.allow_public); /metrics, /healthz and /readyz are served on
# 9090 (admin.metrics_bind) for Prometheus and health checks. State lives in the volume
# /var/lib/gateway. compose.yaml runs it with a Prometheus scraping it.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked --bin gateway

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/gateway --create-home gateway
COPY --from=build /src/target/release/gateway /usr/local/bin/gateway
COPY gateway.toml /etc/gateway/gateway.toml
COPY rules /etc/gateway/rules
# Inside a container the data-plane listeners must listen on all interfaces.
# Every path under data/ (the store, token files, secrets) moves to the volume.
RUN sed -i -e 's/127.0.0.1:8443/0.0.0.0:8443/' -e 's/127.0.0.1:8080/0.0.0.0:8080/' \
        -e 's|^data_dir = "data"|data_dir = "/var/lib/gateway"|' \
        -e 's|"data/|"/var/lib/gateway/|g' \
        -e 's|^# metrics_bind = "0.0.0.0:9090"|metrics_bind = "0.0.0.0:9090"|' \
        /etc/gateway/gateway.toml \
    && mkdir -p /etc/gateway/certs && chown -R gateway /etc/gateway/certs
USER gateway
VOLUME /var/lib/gateway
EXPOSE 8443 8080 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
    CMD ["/usr/local/bin/gateway", "health", "--config", "/etc/gateway/gateway.toml"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gateway"]
CMD ["run", "--config", "/etc/gateway/gateway.toml"]
