# Build:  docker build -t gateway .            (or: podman build -t gateway .)
# Run:    docker run --rm -p 8443:8443 -p 8080:8080 -p 9090:9090 -v gateway-data:/var/lib/gateway gateway
#
# The final image is `scratch` plus a statically linked binary, its config, rules, the CA
# bundle and a passwd entry: no shell, no package manager, no libc to patch. It runs as
# UID 65532. Mount your own config at /etc/gateway/gateway.toml (and certificates beside
# it) for production. The admin API stays on the container's loopback unless your config
# says otherwise (admin.bind + admin.allow_public); /metrics, /healthz and /readyz are
# served on 9090 (admin.metrics_bind) for Prometheus and health checks. State lives in the
# volume /var/lib/gateway. compose.yaml runs it with a Prometheus scraping it.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
COPY gateway.toml ./
COPY rules ./rules
# glibc linked statically (crt-static): the binary needs no loader and no .so at run time.
RUN RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release --locked --bin gateway --target x86_64-unknown-linux-gnu \
    && cp target/x86_64-unknown-linux-gnu/release/gateway /src/gateway

# The image's whole file system, assembled under $ROOTFS from the binary ($SRC/gateway),
# the shipped config and rules, and the build image's CA bundle, plus $STATE: the volume's
# initial (empty) directory, the one place the gateway writes. Inside a container the
# data-plane listeners listen on all interfaces, the metrics-only listener is on, and every
# path under data/ (the store, token files, secrets) and the generated development
# certificates move to the volume.
ENV SRC=/src ROOTFS=/rootfs STATE=/state
RUN set -eu; \
    mkdir -p "$ROOTFS/usr/local/bin" "$ROOTFS/etc/gateway" "$ROOTFS/etc/ssl/certs" \
        "$ROOTFS/var/lib" "$ROOTFS/tmp"; \
    mkdir -p -m 0700 "$STATE"; \
    strip --strip-debug -o "$ROOTFS/usr/local/bin/gateway" "$SRC/gateway"; \
    cp "$SRC/gateway.toml" "$ROOTFS/etc/gateway/gateway.toml"; \
    cp -R "$SRC/rules" "$ROOTFS/etc/gateway/rules"; \
    cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"; \
    sed -i -e 's/127.0.0.1:8443/0.0.0.0:8443/' -e 's/127.0.0.1:8080/0.0.0.0:8080/' \
        -e 's|^data_dir = "data"|data_dir = "/var/lib/gateway"|' \
        -e 's|"data/|"/var/lib/gateway/|g' -e 's|"certs/|"/var/lib/gateway/certs/|g' \
        -e 's|^# metrics_bind = "0.0.0.0:9090"|metrics_bind = "0.0.0.0:9090"|' \
        "$ROOTFS/etc/gateway/gateway.toml"; \
    printf 'root:x:0:0:root:/root:/nonexistent\ngateway:x:65532:65532:gateway:/var/lib/gateway:/nonexistent\n' \
        > "$ROOTFS/etc/passwd"; \
    printf 'root:x:0:\ngateway:x:65532:\n' > "$ROOTFS/etc/group"; \
    chmod 1777 "$ROOTFS/tmp"

FROM scratch AS runtime
# Everything belongs to root and is read-only to the gateway but its state directory.
COPY --from=build /rootfs/ /
COPY --from=build --chown=65532:65532 /state/ /var/lib/gateway/
USER 65532:65532
VOLUME /var/lib/gateway
EXPOSE 8443 8080 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
    CMD ["/usr/local/bin/gateway", "health", "--config", "/etc/gateway/gateway.toml"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gateway"]
CMD ["run", "--config", "/etc/gateway/gateway.toml"]
