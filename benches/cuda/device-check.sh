#!/usr/bin/env bash
# The CUDA path on one GPU, in one command (about 5 minutes on an H200): the CUDA tests
# (tests/cuda.rs: every kernel against the CPU op, SmolLM2-135M and Qwen2.5-0.5B greedy tokens
# against the CPU path, batch invariance), a request through the server on the GPU, then the
# benchmark table (benches/cuda.rs).
#
# Where cargo exists it builds with `--features cuda` (nvcc from CUDA_HOME, PATH or NVCC).
# Elsewhere (a GPU machine with the driver but no Rust) it runs the binaries that
# benches/cuda/pack.sh built, from R1SERVE_CUDA_BIN (default .dev/bin).
# Test checkpoints come from R1SERVE_MODELS (default ~/.cache/r1serve/models, filled by
# models/fetch.sh); a test whose checkpoint is absent is reported as NOT RUN, never as passed.
set -uo pipefail
cd "$(dirname "$0")/../.."
models=${R1SERVE_MODELS:-$HOME/.cache/r1serve/models}
export R1SERVE_MODELS=$models
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

# libcublas 13: the toolkit's, or the nvidia-cublas wheel's inside a Python environment.
if ! ldconfig -p | grep -q 'libcublas.so.13'; then
  lib=$(find /usr/local/cuda/lib64 /usr/local /opt /usr/lib -name 'libcublas.so.13' 2>/dev/null | head -1)
  [ -n "$lib" ] && export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

if command -v cargo >/dev/null; then
  tests() { cargo test --release --features cuda --test cuda -- "$@"; }
  bench() { cargo bench --features cuda --bench cuda; }
  cargo build --release --features cuda --bin r1serve || exit 1
  server=target/release/r1serve
else
  bin=${R1SERVE_CUDA_BIN:-.dev/bin}
  for f in "$bin"/*.xz; do
    [ -e "$f" ] || continue
    xz -dkf "$f" 2>/dev/null ||
      python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[1][:-3], "wb"))' "$f"
  done
  chmod +x "$bin"/cuda-tests "$bin"/cuda-bench "$bin"/r1serve
  tests() { "$bin"/cuda-tests "$@"; }
  bench() { "$bin"/cuda-bench; }
  server=$bin/r1serve
fi

skip=()
[ -f "$models/SmolLM2-135M-Instruct.Q4_1.gguf" ] || skip+=(smollm2 batch_invariance)
[ -f "$models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" ] || skip+=(qwen05)
for s in "${skip[@]}"; do echo "NOT RUN (checkpoint absent from $models): tests matching '$s'"; done
args=()
for s in "${skip[@]}"; do args+=(--skip "$s"); done
echo "== CUDA tests"
tests --nocapture --test-threads 2 "${args[@]}"
rc=$?

if [ -f "$models/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  echo "== the server on the GPU (SmolLM2-135M, greedy)"
  port=18181
  "$server" serve --model "$models/SmolLM2-135M-Instruct.Q4_1.gguf" --device cuda --port $port \
    > /tmp/r1serve-cuda.log 2>&1 &
  pid=$!
  for _ in $(seq 60); do curl -sf localhost:$port/health >/dev/null && break; sleep 0.5; done
  curl -s localhost:$port/v1/chat/completions -H 'content-type: application/json' \
    -d '{"messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":24,"temperature":0}'
  echo
  grep -m3 -E 'KV cache|device|cuda' /tmp/r1serve-cuda.log
  kill $pid
fi

echo "== benchmark"
bench
brc=$?
echo "tests rc=$rc bench rc=$brc"
[ $rc -eq 0 ] && [ $brc -eq 0 ]
