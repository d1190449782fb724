#!/usr/bin/env python3
"""Converts the tiny DeepSeek checkpoints `gen_tiny.py` builds to GGUF with
llama.cpp's own `convert_hf_to_gguf.py`, as people convert V2/V3/R1 for CPU
serving (architecture `deepseek2`).

    python models/deepseek/gen_gguf.py MODELS_DIR LLAMA_CPP_DIR

LLAMA_CPP_DIR is llama.cpp's source tree (`models/fetch.sh` unpacks the one
vendored in the llama-cpp-python source package): its `convert_hf_to_gguf.py`,
`conversion/` and `gguf-py/` are used as they are. It writes, beside each HF
directory, `<name>.<type>.gguf` for F32, F16 and Q8_0 (V3 bf16) and F32 (V2);
their reference is the HF directory's `reference.json` (the F32 file holds the
same bf16 values).

llama.cpp names a GGUF's pre-tokenizer by hashing how the tokenizer encodes a
fixed text, which only recognises the published vocabularies; the tiny ones
are trained here, so the name is given: the tiny tokenizers split text exactly
as R1's (`deepseek-v3`) and DeepSeek-LLM's (`deepseek-llm`) do.

A file whose `.complete` stamp holds this script's sha256 and the HF
directory's own stamp is left alone.
"""

import hashlib
import logging
import sys
from pathlib import Path

SCRIPT_SHA = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
# (HF directory, pre-tokenizer, output types)
JOBS = [
    ("tiny-deepseek-v3-bf16", "deepseek-v3", ["f32", "f16", "q8_0"]),
    ("tiny-deepseek-v2-bf16", "deepseek-llm", ["f32"]),
]


def stamp(models, name):
    return SCRIPT_SHA + " " + (models / name / "complete").read_text()


def pending(models):
    out = []
    for name, pre, types in JOBS:
        for t in types:
            gguf = models / f"{name}.{t}.gguf"
            done = Path(str(gguf) + ".complete")
            if done.is_file() and done.read_text() == stamp(models, name):
                print(f"ok   {gguf.name}", file=sys.stderr)
            else:
                out.append((name, pre, t, gguf, done))
    return out


def main():
    models, llama_cpp = Path(sys.argv[1]), Path(sys.argv[2])
    todo = pending(models)
    if not todo:
        return
    sys.path[:0] = [str(llama_cpp), str(llama_cpp / "gguf-py")]
    import convert_hf_to_gguf  # noqa: E402
    from conversion.base import TextModel  # noqa: E402

    # The converter logs every tensor at INFO; fetch.sh prints progress only.
    logging.disable(logging.INFO)

    for name, pre, outtype, gguf, done in todo:
        TextModel.get_vocab_base_pre = lambda self, tokenizer, pre=pre: pre
        sys.argv = ["convert_hf_to_gguf.py", str(models / name), "--outtype", outtype,
                    "--outfile", str(gguf)]
        convert_hf_to_gguf.main()
        done.write_text(stamp(models, name))
        print(f"ok   {gguf.name}", file=sys.stderr)


if __name__ == "__main__":
    main()
