# o365-relay container image: the service (`o365-relay`, built without the demo) and the
# simulator (`o365-sim`, its own workspace crate).
#
#   docker build -t o365-relay:dev .
#   docker run --rm o365-relay:dev check        # any o365-relay sub-command
#   docker run --rm --entrypoint o365-sim o365-relay:dev --listen 0.0.0.0:8090
#
# The runtime stage runs as UID/GID 10001, writes nothing to its filesystem (works with a
# read-only root filesystem) and listens on 8080 (public) and 9090 (admin).
#
# The base images are build arguments whose defaults are the public images; CI, which reaches
# no registry, builds its own from Debian's packages and passes them (.ci/image-check).
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

############################ builder ############################
FROM ${RUST_IMAGE} AS builder

WORKDIR /build

# 1. Dependencies only: compile them against stub targets, so that this (slow) layer is
#    reused as long as the manifests and Cargo.lock do not change. Every `path = "....rs"`
#    target declared in a manifest gets a stub, so the manifests load (those stubs stay: only
#    the two binaries are built from here on; the benchmark, crates/o365-bench, and the example
#    consumer, examples/consumer-rust, are workspace members whose manifests must load, but they
#    are never built here). The relay is built without its `demo` feature: the production
#    binary does not contain the simulator, which is its own binary.
COPY Cargo.toml Cargo.lock ./
COPY crates/o365-sim/Cargo.toml ./crates/o365-sim/
COPY crates/o365-bench/Cargo.toml ./crates/o365-bench/
COPY crates/test-support/Cargo.toml ./crates/test-support/
COPY examples/consumer-rust/Cargo.toml ./examples/consumer-rust/
RUN set -eux; \
    for dir in . crates/o365-sim crates/o365-bench crates/test-support examples/consumer-rust; do \
        sed -n 's/^[[:space:]]*path[[:space:]]*=[[:space:]]*"\([^"]*\.rs\)".*/\1/p' "$dir/Cargo.toml" \
            > /tmp/targets; \
        while IFS= read -r p; do \
            mkdir -p "$(dirname "$dir/$p")"; echo 'fn main() {}' > "$dir/$p"; \
        done < /tmp/targets; \
    done; \
    : > src/lib.rs; \
    : > crates/o365-sim/src/lib.rs; \
    : > crates/test-support/src/lib.rs; \
    cargo build --release --locked -p o365-relay --no-default-features --bin o365-relay; \
    cargo build --release --locked -p o365-sim --bin o365-sim; \
    rm -rf src crates/o365-sim/src crates/o365-bench/src crates/test-support/src

# 2. The real sources. Touch them so they are newer than the stub build's artefacts whatever
#    mtimes COPY gives them, and drop the crates' own fingerprints: cargo must rebuild the
#    crates (not the dependencies). The release profile keeps line tables (Cargo.toml); the
#    image drops them (strip --strip-debug: the binaries shrink to a quarter). A panic still
#    names its file and line (compiled in), a backtrace its functions (symbols are kept).
COPY src ./src
COPY crates ./crates
RUN set -eux; \
    find src crates -type f -name '*.rs' -exec touch {} +; \
    rm -rf target/release/.fingerprint/o365-relay-* target/release/.fingerprint/o365-sim-* \
           target/release/deps/o365_relay-* target/release/deps/libo365_relay-* \
           target/release/deps/o365_sim-* target/release/deps/libo365_sim-*; \
    cargo build --release --locked -p o365-relay --no-default-features --bin o365-relay; \
    cargo build --release --locked -p o365-sim --bin o365-sim; \
    install -D -m 0755 target/release/o365-relay /out/o365-relay; \
    install -D -m 0755 target/release/o365-sim /out/o365-sim; \
    strip --strip-debug /out/o365-relay /out/o365-sim

############################ runtime ############################
FROM ${RUNTIME_IMAGE} AS runtime

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
