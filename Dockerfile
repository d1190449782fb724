# CPU image of r1serve. Build: docker build -t r1serve .
# Run:   docker run -p 8000:8000 -v $HOME/.cache/huggingface:/root/.cache/huggingface \
#          r1serve serve --host 0.0.0.0 --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs* ./
COPY src src
COPY benches benches
COPY tests tests
RUN cargo build --release --bin r1serve

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/r1serve /usr/local/bin/r1serve
EXPOSE 8000
ENTRYPOINT ["r1serve"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"]
