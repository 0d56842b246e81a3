# mesh's one image: `mesh-agent node` (the DaemonSet), `mesh-agent ca` (the
# CA Deployment; `mesh-ca` is the same CA), `mesh-waypoint` (the waypoint
# Deployments the CA's controller creates), the `mesh` CLI and the CNI plugin
# `mesh-cni` (its `install` copies it onto the node). Build: cargo xtask image
# (or docker build -t <tag> . where a Docker engine runs). The binaries built
# and copied below are the ones `cargo xtask build-release` puts in
# target/dist (xtask/src/pgo.rs; its tests hold the two lists equal).

# Stage 1: the kernel programs (nightly + bpf-linker) and the binaries.
# The toolchain the repository builds with: a profile (below) is read by
# the LLVM of the rustc that wrote it.
FROM rust:1.95-bookworm AS build
RUN rustup toolchain install nightly --profile minimal --component rust-src \
 && cargo install bpf-linker --version 0.10.4 --locked
WORKDIR /src
COPY . .
# mesh-agent's build.rs builds mesh-ebpf and embeds the object. With the
# profile `cargo xtask image` stages from `cargo xtask build-release` (the
# agent's and the waypoint's training runs merged into one file), the
# agent, CLI, CA and waypoint are the profiled (PGO) builds the benchmarks
# measure; without it, plain release builds.
# mesh-cni is linked statically either way: the node's runtime runs it with
# the host's glibc, which may be older than this one (see PLUGIN there).
RUN cargo xtask build-ebpf \
 && if [ -f pgo/mesh-agent.profdata ]; then \
      cargo xtask build-release --profile pgo/mesh-agent.profdata; \
    else \
      host="$(rustc -vV | sed -n 's/^host: //p')" \
      && cargo build --release --bin mesh-agent --bin mesh --bin mesh-ca --bin mesh-waypoint \
      && RUSTFLAGS="-Ctarget-feature=+crt-static" cargo build --release --bin mesh-cni \
           --target "$host" --target-dir target/static \
      && mkdir -p target/dist \
      && cp target/release/mesh-agent target/release/mesh target/release/mesh-ca \
            target/release/mesh-waypoint target/dist/ \
      && cp "target/static/$host/release/mesh-cni" target/dist/; \
    fi

# Stage 2: glibc and nothing else; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /src/target/dist/mesh-agent /src/target/dist/mesh /src/target/dist/mesh-ca /src/target/dist/mesh-waypoint /src/target/dist/mesh-cni /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/mesh-agent"]
