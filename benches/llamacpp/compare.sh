#!/usr/bin/env bash
# r1serve against llama.cpp on the same GGUF files, in one command: builds
# llama.cpp (benches/llamacpp/build.sh, outside the repo) and r1serve, then
# runs benches/llamacpp/compare.py, which prints both tables (in-process
# single-stream decode; streaming chat through each server at 1 and 16
# streams) naming the CPU and its instruction set.
#
# Usage: benches/llamacpp/compare.sh [--bf16 | MODEL[=GGUF] ...]
#   default: SmolLM2-135M Q4_1, Qwen2.5-Coder-0.5B and 1.5B Q4_K_M from
#   models/fetch.sh. MODEL=GGUF: r1serve runs MODEL (GGUF or HF directory),
#   llama.cpp runs GGUF. --bf16: the bf16 HF directories of Qwen2.5-Coder-0.5B
#   and 1.5B (built by the safetensors parity tests, which this runs first)
#   against BF16 GGUFs of the same values (benches/llamacpp/bf16_gguf.py,
#   written to R1SERVE_CACHE/bf16).
# Environment: PYTHON (needs httpx and numpy; default: the tests' venv when
#   present, else python3), TOKENS (default 128), THREADS (llama.cpp threads;
#   default: all CPUs, as r1serve uses), LLAMACPP_* as in build.sh;
#   LLAMACPP_ISA=avx2 also runs r1serve under R1SERVE_ISA=avx2, so both sides
#   use their AVX2 kernels only.
# Run it on an otherwise idle machine: both programs are bandwidth-bound.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${R1SERVE_CACHE:-$HOME/.cache/r1serve}"

llama_bin="$("$repo/benches/llamacpp/build.sh" | tail -n 1)"
if [[ "${LLAMACPP_ISA:-}" == avx2 ]]; then
    export R1SERVE_ISA=avx2
fi
(cd "$repo" && cargo build --release --bin r1serve >&2)

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    python="$cache/venv/bin/python"
    [[ -x "$python" ]] || python=python3
fi

models="$cache/models"
if [[ "${1:-}" == "--bf16" ]]; then
    (cd "$repo" && cargo test --release --test safetensors safetensors_qwen2 >&2)
    gguf_py="$cache/dl/llama-cpp-python-${LLAMACPP_PY_VERSION:-0.3.36}/vendor/llama.cpp/gguf-py"
    [[ -d "$gguf_py" ]] || gguf_py="$(dirname "$llama_bin")/src/gguf-py"
    mkdir -p "$cache/bf16"
    set --
    for size in 0.5b 1.5b; do
        out="$cache/bf16/qwen2.5-coder-$size-instruct-bf16.gguf"
        [[ -f "$out" ]] || "$python" "$repo/benches/llamacpp/bf16_gguf.py" "$gguf_py" \
            "$models/qwen2.5-coder-$size-instruct-q4_k_m.gguf" "$out"
        set -- "$@" "$models/hf-qwen2.5-coder-$size-bf16=$out"
    done
elif [[ $# -eq 0 ]]; then
    set -- "$models/SmolLM2-135M-Instruct.Q4_1.gguf" \
           "$models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" \
           "$models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
fi

exec "$python" "$repo/benches/llamacpp/compare.py" \
    --llama-bin "$llama_bin" --r1serve "$repo/target/release/r1serve" \
    --tokens "${TOKENS:-128}" --threads "${THREADS:-$(nproc)}" "$@"
