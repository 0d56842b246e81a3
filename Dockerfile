# mesh's one image: `mesh-agent node` (the DaemonSet), `mesh-agent ca` (the
# CA Deployment) and the `mesh` CLI. Build: cargo xtask image (or docker
# build -t <tag> . where a Docker engine runs).

# Stage 1: the kernel programs (nightly + bpf-linker) and the binaries.
FROM rust:1-bookworm AS build
RUN rustup toolchain install nightly --profile minimal --component rust-src \
 && cargo install bpf-linker --version 0.10.4 --locked
WORKDIR /src
COPY . .
# mesh-agent's build.rs builds mesh-ebpf and embeds the object.
RUN cargo xtask build-ebpf \
 && cargo build --release -p mesh-agent --bins

# Stage 2: glibc and nothing else; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /src/target/release/mesh-agent /src/target/release/mesh /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/mesh-agent"]
