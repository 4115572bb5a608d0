# o365-relay container image: the service (`o365-relay`) and the simulator (`o365-sim`).
#
#   docker build -t o365-relay:dev .
#   docker run --rm o365-relay:dev check        # any o365-relay sub-command
#   docker run --rm --entrypoint o365-sim o365-relay:dev --listen 0.0.0.0:8090
#
# The runtime stage runs as UID/GID 10001, writes nothing to its filesystem (works with a
# read-only root filesystem) and listens on 8080 (public) and 9090 (admin).

############################ builder ############################
FROM rust:1-bookworm AS builder

WORKDIR /build

# 1. Dependencies only: compile them against stub targets, so that this (slow) layer is
#    reused as long as Cargo.toml and Cargo.lock do not change. Every `path = "....rs"` target
#    declared in Cargo.toml gets a stub, so explicitly declared tests/benches do not break the
#    manifest (those stubs stay: only the two binaries are built from here on).
COPY Cargo.toml Cargo.lock ./
RUN set -eux; \
    mkdir -p src/bin; \
    : > src/lib.rs; \
    echo 'fn main() {}' > src/main.rs; \
    echo 'fn main() {}' > src/bin/o365-sim.rs; \
    sed -n 's/^[[:space:]]*path[[:space:]]*=[[:space:]]*"\([^"]*\.rs\)".*/\1/p' Cargo.toml > /tmp/targets; \
    while IFS= read -r p; do \
        if [ ! -e "$p" ]; then mkdir -p "$(dirname "$p")"; echo 'fn main() {}' > "$p"; fi; \
    done < /tmp/targets; \
    cargo build --release --locked --bin o365-relay --bin o365-sim; \
    rm -rf src

# 2. The real sources. Touch them so they are newer than the stub build's artefacts whatever
#    mtimes COPY gives them, and drop the crate's own fingerprints: cargo must rebuild the
#    crate (not the dependencies).
COPY src ./src
RUN set -eux; \
    find src -type f -exec touch {} +; \
    rm -rf target/release/.fingerprint/o365-relay-* target/release/deps/o365_relay-* \
           target/release/deps/libo365_relay-* target/release/deps/o365_sim-*; \
    cargo build --release --locked --bin o365-relay --bin o365-sim; \
    install -D -m 0755 target/release/o365-relay /out/o365-relay; \
    install -D -m 0755 target/release/o365-sim /out/o365-sim

############################ runtime ############################
FROM debian:bookworm-slim AS runtime

# Versions are deliberately not pinned (hadolint DL3008): Debian's security archive replaces
# libssl3 and ca-certificates in place, so a pinned version stops building after the next
# security update. Rebuild the image to pick up fixes.
# hadolint ignore=DL3008
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates libssl3; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 o365; \
    useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin o365

COPY --from=builder /out/o365-relay /out/o365-sim /usr/local/bin/

ENV O365_LOG_FORMAT=json

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

# 8080: public listener (/webhook, /consent...), 9090: admin listener (/healthz, /readyz, /metrics).
EXPOSE 8080 9090

# No HEALTHCHECK: Kubernetes ignores it and uses the probes on the admin port (/healthz,
# /readyz); docker-compose.yml declares its own healthchecks.
ENTRYPOINT ["/usr/local/bin/o365-relay"]
CMD ["serve"]
