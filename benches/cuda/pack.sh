#!/usr/bin/env bash
# Builds the CUDA test, benchmark and server binaries (`--features cuda`, nvcc from
# .ci/cuda-toolchain.sh) and copies them, xz-compressed, to ${1:-.dev/bin}, for a GPU machine
# that has the driver and libcublas but no Rust toolchain; device-check.sh runs them there.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-.dev/bin}
eval "$(bash .ci/cuda-toolchain.sh)"
mkdir -p "$out"
exe() { # the executable of target $1 (kind $2) in cargo's --message-format=json output
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and m.get("executable") and t.get("name") == sys.argv[1] and sys.argv[2] in t.get("kind", []):
        print(m["executable"])' "$1" "$2" | tail -1
}
t=$(cargo test --release --features cuda --test cuda --no-run --message-format=json | exe cuda test)
b=$(cargo bench --features cuda --bench cuda --no-run --message-format=json | exe cuda bench)
cargo build --release --features cuda --bin r1serve
for pair in "$t:cuda-tests" "$b:cuda-bench" "target/release/r1serve:r1serve"; do
  strip --strip-debug -o "$out/${pair#*:}" "${pair%%:*}"
  xz -T0 -6 -f "$out/${pair#*:}"
done
ls -la "$out"
