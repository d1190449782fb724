#!/usr/bin/env bash
# r1serve against llama.cpp on the same GGUF files, in one command: builds
# llama.cpp (benches/llamacpp/build.sh, outside the repo) and r1serve, then
# runs benches/llamacpp/compare.py, which prints both tables (in-process
# single-stream decode; streaming chat through each server at 1 and 16
# streams) naming the CPU and its instruction set.
#
# Usage: benches/llamacpp/compare.sh [GGUF ...]
#   default GGUFs: SmolLM2-135M Q4_1 and Qwen2.5-Coder-0.5B Q4_K_M from
#   models/fetch.sh. Environment: PYTHON (needs httpx; default: the tests'
#   venv when present, else python3), TOKENS (default 128), THREADS (llama.cpp
#   threads; default: all CPUs, as r1serve uses), LLAMACPP_* as in build.sh.
# Run it on an otherwise idle machine: both programs are bandwidth-bound.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${R1SERVE_CACHE:-$HOME/.cache/r1serve}"

llama_bin="$("$repo/benches/llamacpp/build.sh" | tail -n 1)"
(cd "$repo" && cargo build --release --bin r1serve >&2)

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    python="$cache/venv/bin/python"
    [[ -x "$python" ]] || python=python3
fi

if [[ $# -eq 0 ]]; then
    set -- "$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf" \
           "$cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
fi

exec "$python" "$repo/benches/llamacpp/compare.py" \
    --llama-bin "$llama_bin" --r1serve "$repo/target/release/r1serve" \
    --tokens "${TOKENS:-128}" --threads "${THREADS:-$(nproc)}" "$@"
