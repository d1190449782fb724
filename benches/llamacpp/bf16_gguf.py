#!/usr/bin/env python3
"""Writes a BF16 GGUF holding a GGUF's weights dequantized, for llama.cpp.

The bf16 comparison (benches/llamacpp/compare.sh --bf16) needs llama.cpp to
run the same weights as the bf16 Hugging Face directories the tests build from
the quantized checkpoints (tests/common/hf_dir.rs). Both dequantize every
tensor to f32 and round it to bf16 (nearest, ties to even), so llama.cpp's
file and r1serve's directory hold the same values. One-dimensional tensors
(norms, biases) are rounded the same way but stored as F32, the type
llama.cpp's own converter gives them; metadata (tokenizer, chat template,
hyperparameters) is copied unchanged.

Usage: bf16_gguf.py GGUF_PY_DIR IN.gguf OUT.gguf
  GGUF_PY_DIR: llama.cpp's gguf-py directory (from the llama-cpp-python
  sdist, as models/fetch.sh unpacks it).
"""

import os
import sys

import numpy as np


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip().splitlines()[-3])
    gguf_py, src, dst = sys.argv[1:]
    sys.path.insert(0, gguf_py)
    import gguf
    from gguf import GGMLQuantizationType as T

    reader = gguf.GGUFReader(src)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    tmp = dst + ".partial"
    writer = gguf.GGUFWriter(tmp, arch)
    for field in reader.fields.values():
        # GGUFWriter writes the architecture and the GGUF.* virtual fields itself.
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    for t in reader.tensors:
        # ggml lists dimensions fastest first; numpy wants them slowest first.
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        data, kind = gguf.quants.quantize(values, T.BF16), T.BF16
        if len(shape) == 1:
            data, kind = gguf.quants.dequantize(data, T.BF16).astype(np.float32), T.F32
        writer.add_tensor(t.name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, dst)
    print(f"{dst}: {len(reader.tensors)} tensors", file=sys.stderr)


if __name__ == "__main__":
    main()
