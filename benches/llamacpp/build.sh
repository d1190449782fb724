#!/usr/bin/env bash
# Builds llama.cpp's llama-server and llama-bench natively (-DGGML_NATIVE=ON, Release; see LLAMACPP_ISA) outside the repo,
# for the side-by-side comparison in benches/llamacpp/compare.sh. The sources come from the
# llama-cpp-python sdist (which vendors llama.cpp), fetched with pip when it is not already on disk.
# Idempotent: when both binaries exist it only prints their directory.
#
# Usage: benches/llamacpp/build.sh [-jN]
# Environment:
#   LLAMACPP_PY_VERSION  llama-cpp-python version whose vendored llama.cpp is built (default 0.3.36)
#   LLAMACPP_SDIST       path of that sdist (.tar.gz); fetched into R1SERVE_CACHE/dl when absent
#   R1SERVE_CACHE        cache root (default ~/.cache/r1serve); binaries go to llama.cpp-<version>/bin
#   LLAMACPP_NO_AMX=1    native build without ggml's AMX backend, in llama.cpp-<version>-noamx: on a
#                        2-core AMX Xeon VM (2026-12-01) that backend segfaulted in
#                        ggml_backend_amx_mul_mat on every model (`--repack 0` avoids it, but also
#                        turns off the AVX-512 repacked kernels this build keeps)
#   LLAMACPP_ISA=avx2    a portable AVX2/FMA/F16C build (-DGGML_NATIVE=OFF, no AVX-512 or AMX), in
#                        llama.cpp-<version>-avx2: with R1SERVE_ISA=avx2 (compare.sh sets it), both
#                        programs run their AVX2 kernels, so an AVX-512 machine can measure what an
#                        AVX2-only CPU runs
# Prints the directory holding the two binaries on its last line of stdout.
set -euo pipefail

jobs="-j$(nproc)"
for arg in "$@"; do
    case "$arg" in
        -j*) jobs="$arg" ;;
        *) echo "usage: $0 [-jN]" >&2; exit 2 ;;
    esac
done

version="${LLAMACPP_PY_VERSION:-0.3.36}"
cache="${R1SERVE_CACHE:-$HOME/.cache/r1serve}"
root="$cache/llama.cpp-$version"
cflags=""
native=ON
if [[ "${LLAMACPP_ISA:-}" == avx2 ]]; then
    root="$root-avx2"
    native=OFF
elif [[ -n "${LLAMACPP_ISA:-}" ]]; then
    echo "$0: LLAMACPP_ISA=${LLAMACPP_ISA} is not 'avx2'" >&2
    exit 2
elif [[ -n "${LLAMACPP_NO_AMX:-}" ]]; then
    root="$root-noamx"
    cflags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
bin="$root/bin"

if [[ -x "$bin/llama-server" && -x "$bin/llama-bench" ]]; then
    echo "$bin"
    exit 0
fi

for tool in cmake c++ tar; do
    command -v "$tool" >/dev/null || { echo "$0: '$tool' is required (e.g. apt-get install cmake g++)" >&2; exit 1; }
done

sdist="${LLAMACPP_SDIST:-}"
if [[ -z "$sdist" ]]; then
    for candidate in "$cache/dl/llama-cpp-python-src/llama_cpp_python-$version.tar.gz" \
                     "$cache/dl/llama_cpp_python-$version.tar.gz"; do
        [[ -f "$candidate" ]] && { sdist="$candidate"; break; }
    done
fi
if [[ -z "$sdist" ]]; then
    mkdir -p "$cache/dl"
    echo "fetching the llama-cpp-python $version sdist with pip" >&2
    python3 -m pip download --no-deps --no-binary :all: --dest "$cache/dl" "llama-cpp-python==$version" >&2
    sdist="$cache/dl/llama_cpp_python-$version.tar.gz"
fi
[[ -f "$sdist" ]] || { echo "$0: sdist '$sdist' not found" >&2; exit 1; }

src="$root/src"
if [[ ! -f "$src/CMakeLists.txt" ]]; then
    rm -rf "$src.tmp"
    mkdir -p "$src.tmp"
    echo "extracting vendor/llama.cpp from $sdist" >&2
    tar -xzf "$sdist" -C "$src.tmp" --strip-components=3 "llama_cpp_python-$version/vendor/llama.cpp"
    rm -rf "$src"
    mv "$src.tmp" "$src"
fi

build="$root/build"
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=$native \
    -DCMAKE_C_FLAGS="$cflags" -DCMAKE_CXX_FLAGS="$cflags" \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF >&2
cmake --build "$build" --config Release --target llama-server llama-bench "$jobs" >&2

mkdir -p "$bin"
for tool in llama-server llama-bench; do
    cp "$build/bin/$tool" "$bin/$tool.tmp"
    mv "$bin/$tool.tmp" "$bin/$tool"
done
echo "$bin"
