#!/usr/bin/env bash
# CUDA compiler without a system CUDA install: nvcc 13.4 from PyPI wheels, installed by the pip of
# the project's Python environment (models/fetch.sh creates it, also where `python3 -m venv` has no
# pip) into ${R1SERVE_CUDA:-~/.cache/r1serve/cuda}. Compiles and links device code for sm_80 and
# sm_90 (fp16/bf16 headers from cccl); runs nothing, needs no GPU.
# Usage: eval "$(bash .ci/cuda-toolchain.sh)"   → exports PATH, CUDA_HOME, CUDA_PATH, NVCC_CCBIN.
# r1serve pins cudarc's bindings to CUDA 13.0 (the `cuda-13000` feature: the oldest CUDA 13
# driver), so CUDARC_CUDA_VERSION stays unset: cudarc would add a second set of bindings.
set -euo pipefail
dir=${R1SERVE_CUDA:-$HOME/.cache/r1serve/cuda}
py=${R1SERVE_VENV:-$HOME/.cache/r1serve/venv}/bin/python
if [ ! -x "$dir/nvidia/cu13/bin/nvcc" ]; then
  if ! "$py" -m pip --version >/dev/null 2>&1; then
    echo "no Python environment at $py: run models/fetch.sh first (it creates one)" >&2
    exit 1
  fi
  rm -rf "$dir"
  "$py" -m pip install --quiet --disable-pip-version-check --target "$dir" \
    "nvidia-cuda-nvcc==13.4.*" "nvidia-nvvm==13.4.*" "nvidia-cuda-runtime==13.4.*" \
    "nvidia-cuda-crt==13.4.*" nvidia-cuda-cccl >&2
fi
nv=$dir/nvidia/cu13
echo "export PATH=\"$nv/bin:$nv/nvvm/bin:\$PATH\""
echo "export CUDA_HOME=\"$nv\" CUDA_PATH=\"$nv\"; unset CUDARC_CUDA_VERSION"
echo "export NVCC_CCBIN=\"\${NVCC_CCBIN:-$(command -v g++ || echo g++)}\""
