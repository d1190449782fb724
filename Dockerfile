# syntax=docker/dockerfile:1
# r1serve images. The cpu stage is last, so a plain `docker build .` gives it.
# Build: docker build --target cpu -t r1serve .
#        docker build --target cuda -t r1serve:cuda .
# Run:   docker run -p 8000:8000 -v $HOME/.cache/huggingface:/root/.cache/huggingface \
#          r1serve serve --host 0.0.0.0 --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
#        docker run --gpus all -p 8000:8000 -v $HOME/.cache/huggingface:/root/.cache/huggingface \
#          r1serve:cuda serve --host 0.0.0.0 --model deepseek-ai/DeepSeek-R1-Distill-Qwen-7B --device cuda
# Cargo's registry and target/ sit in BuildKit cache mounts, so a source edit
# recompiles only this crate. A mount is not part of the image, hence the cp
# of the binary out of it.

FROM nvidia/cuda:13.0.2-devel-ubuntu24.04 AS cuda-build
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends \
        curl ca-certificates build-essential pkg-config \
    && rm -rf /var/lib/apt/lists/*
# The rust image's layout, so both builders share the registry cache mount.
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH NVCC=/usr/local/cuda/bin/nvcc
# pipefail: a failed download must fail here, not as a missing cargo later.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --no-modify-path --profile minimal --default-toolchain 1.95.0
WORKDIR /src
# benches/ because Cargo.toml names [[bench]] targets that must exist to parse.
COPY Cargo.toml Cargo.lock build.rs* ./
COPY benches benches
COPY src src
# touch: copied files may carry mtimes older than the cached build's.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,id=r1serve-target-cuda,target=/src/target,sharing=locked \
    touch src/main.rs src/lib.rs \
    && cargo build --release --features cuda --bin r1serve \
    && cp target/release/r1serve /usr/local/bin/r1serve

# libcuda comes from the host driver and libcublas from this image, both
# dlopened at run time: nothing is linked at build time.
FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04 AS cuda
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=cuda-build /usr/local/bin/r1serve /usr/local/bin/r1serve
EXPOSE 8000
ENTRYPOINT ["r1serve"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "--device", "cuda"]

FROM rust:1.95-bookworm AS cpu-build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs* ./
COPY benches benches
COPY src src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,id=r1serve-target-cpu,target=/src/target,sharing=locked \
    touch src/main.rs src/lib.rs \
    && cargo build --release --bin r1serve \
    && cp target/release/r1serve /usr/local/bin/r1serve

FROM debian:bookworm-slim AS cpu
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=cpu-build /usr/local/bin/r1serve /usr/local/bin/r1serve
EXPOSE 8000
ENTRYPOINT ["r1serve"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"]
