#!/usr/bin/env python3
"""Builds tiny DeepSeek-V3 / V2 checkpoints in the Hugging Face hub layout, with
transformers' own outputs beside them as the reference r1serve's tests compare to.

    python models/deepseek/gen_tiny.py [OUT_DIR]      (default $R1SERVE_MODELS or
                                                      ~/.cache/r1serve/models)

`models/fetch.sh` runs it offline after installing `requirements.txt` into its venv.
It writes, each a directory with config.json, safetensors shards and their index,
tokenizer.json, tokenizer_config.json, generation_config.json and reference.json:

- tiny-deepseek-v3-bf16: `DeepseekV3ForCausalLM` (q LoRA, YaRN with mscale and
  mscale_all_dim equal, as in R1, since a GGUF conversion keeps only the
  latter; not 1, so the softmax scale correction shows), one dense layer then three MoE layers, sigmoid routing with a
  non-zero `e_score_correction_bias`, 4 expert groups of which 2 are kept, a shared
  expert) in bf16, plus one MTP layer (`num_nextn_predict_layers`) that
  transformers does not model and r1serve must skip.
- tiny-deepseek-v3-fp8: the same weights with every projection in FP8 E4M3 and
  128×128 `weight_scale_inv` block scales (`quantization_config.quant_method = fp8`),
  as DeepSeek publishes R1. transformers' FP8 path needs a GPU, so the tensors are
  quantized here and the reference is transformers on the weights dequantized the
  way DeepSeek's `fp8_cast_bf16.py` does (f32 product of E4M3 value and scale,
  rounded to bf16).
- tiny-deepseek-v2-bf16: `DeepseekV2ForCausalLM` (no q LoRA, softmax routing,
  greedy top-k, no YaRN: transformers' V2 attention leaves out the mscale softmax
  correction the original V2 code applies, so a YaRN V2 would test that quirk).

The tokenizer is a byte-level BPE trained here on a fixed text, split before
merging as R1's tokenizer does (DeepSeek-LLM's splits for the V2 one), with R1's
special tokens and R1's chat template (read from the R1-Distill GGUF header that fetch.sh
downloads). reference.json holds, for 3 prompts, the prompt ids, transformers'
last-position logits (f32 compute, eager attention) and 24 greedy tokens, plus the
smallest gap between the best and second-best logit over all greedy steps (a test
tolerance must stay below it for token equality to be meaningful).

A directory whose `complete` file holds this script's sha256 is left alone.
"""

import hashlib
import json
import math
import os
import struct
import sys
from pathlib import Path

SCRIPT_SHA = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
NAMES = ["tiny-deepseek-v3-bf16", "tiny-deepseek-v3-fp8", "tiny-deepseek-v2-bf16"]
OUT_ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
    "R1SERVE_MODELS", str(Path.home() / ".cache/r1serve/models")))

# Up to date: done before importing torch, which takes seconds.
if __name__ == "__main__" and all(
        (OUT_ROOT / n / "complete").is_file() and (OUT_ROOT / n / "complete").read_text() == SCRIPT_SHA
        for n in NAMES):
    for n in NAMES:
        print(f"ok   {n}", file=sys.stderr)
    sys.exit(0)

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from tokenizers import AddedToken, Regex  # noqa: E402
from transformers import (  # noqa: E402
    DeepseekV2Config,
    DeepseekV2ForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    PreTrainedTokenizerFast,
)

R1_HEADER = "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.head.gguf"
BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
# R1's added tokens: control tokens, then <think>/</think>, which R1 marks
# non-special so they stay in decoded text.
SPECIAL = [
    BOS, EOS, PAD, "<｜User｜>", "<｜Assistant｜>",
    "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>", "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>",
    "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>", "<｜tool▁sep｜>",
]
NON_SPECIAL = ["<think>", "</think>"]
# Text the BPE merges are learnt from; it includes the line r1serve feeds to
# close a reasoning budget, which must tokenize to a few dozen tokens at most.
CORPUS = """\
The quick brown fox jumps over the lazy dog. A model reasons step by step before it answers.
Question: what is 12 times 7? Let me think. 12 times 7 is 84, so the answer is 84.
def add(a, b):
    return a + b
Paged attention stores keys and values in fixed-size blocks; a latent cache stores one row per token.
Mixture of experts layers route each token to a few experts chosen by a gate with a bias.
The capital of France is Paris. The sun rises in the east and sets in the west.
{"name": "get_weather", "arguments": {"city": "Berlin", "unit": "celsius"}}
0 1 2 3 4 5 6 7 8 9 10 100 1000 + - * / = ( ) [ ] { } < > , . ; : ! ? ' "
I have thought about this enough; time to answer.
"""
PROMPTS = [
    ("chat", "What is 12 times 7?"),
    ("raw", "The quick brown fox"),
    ("chat", "Write a function that adds two numbers."),
]
# The pre-tokenizer splits of R1/V3's tokenizer.json (llama.cpp: "deepseek-v3")
# and of DeepSeek-LLM/V2's ("deepseek-llm"), so that a GGUF conversion can name
# its pre-tokenizer truthfully.
V3_SPLITS = [
    r"\p{N}{1,3}",
    "[一-龥\u3040-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
    "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
]
V2_SPLITS = [
    "[\r\n]",
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+",
    "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
    "\\s+$",
    "[一-龥ࠀ-一가-퟿]+",
    "\\p{N}+",
]
GREEDY_TOKENS = 24
VOCAB = 384


def gguf_chat_template(path):
    """`tokenizer.chat_template` of a GGUF file, read from its header."""
    with open(path, "rb") as f:
        def rd(fmt):
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]

        def string():
            return f.read(rd("Q")).decode()

        scalars = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

        def value(kind):
            if kind == 8:
                return string()
            if kind == 9:
                item, n = rd("I"), rd("Q")
                return [value(item) for _ in range(n)]
            return rd(scalars[kind])

        if f.read(4) != b"GGUF":
            sys.exit(f"{path}: not a GGUF file")
        rd("I"), rd("Q")
        for _ in range(rd("Q")):
            key, kind = string(), rd("I")
            v = value(kind)
            if key == "tokenizer.chat_template":
                return v
    sys.exit(f"{path}: no tokenizer.chat_template")


def build_tokenizer(template, splits):
    """A byte-level BPE whose text is first split by `splits` (applied in
    turn, as DeepSeek's tokenizer.json and llama.cpp's pre-tokenizer of the
    same name do)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * 4, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in NON_SPECIAL])
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        chat_template=template, model_max_length=256,
    )
    return fast


def prompt_ids(tok, kind, text):
    if kind == "chat":
        rendered = tok.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        # The template writes the BOS itself.
        return tok(rendered, add_special_tokens=False)["input_ids"]
    return tok(text)["input_ids"]


def randomize(model, seed):
    """Weights of unit-scale activations (the default 0.02 init gives near-uniform
    logits, whose greedy choices would hinge on rounding)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif "lm_head" in name:
                p.copy_(3.0 * torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))


@torch.no_grad()
def reference(model, tok):
    """Last-position logits and greedy tokens, recomputing the whole sequence each
    step (no cache), in f32."""
    out, min_gap = [], float("inf")
    for kind, text in PROMPTS:
        ids = prompt_ids(tok, kind, text)
        seq, logits0, greedy = list(ids), None, []
        for _ in range(GREEDY_TOKENS):
            logits = model(torch.tensor([seq])).logits[0, -1].float()
            if logits0 is None:
                logits0 = logits.tolist()
            top2 = torch.topk(logits, 2).values
            min_gap = min(min_gap, float(top2[0] - top2[1]))
            nxt = int(torch.argmax(logits))
            greedy.append(nxt)
            seq.append(nxt)
        out.append({"kind": kind, "text": text, "prompt_ids": ids, "last_logits": logits0, "greedy": greedy})
    return {"prompts": out, "min_top2_gap": min_gap}


FP8_MAX = 448.0
BLOCK = 128


def fp8_quantize(w):
    """E4M3 values and per-128×128-block f32 scales (`weight_scale_inv`)."""
    w = w.float()
    rows, cols = w.shape
    br, bc = -(-rows // BLOCK), -(-cols // BLOCK)
    scale = torch.empty(br, bc)
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(br):
        for j in range(bc):
            blk = w[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK]
            s = max(float(blk.abs().max()), 1e-12) / FP8_MAX
            scale[i, j] = s
            q[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK] = (blk / s).to(torch.float8_e4m3fn)
    return q, scale


def fp8_dequantize(q, scale):
    s = scale.repeat_interleave(BLOCK, 0)[: q.shape[0]].repeat_interleave(BLOCK, 1)[:, : q.shape[1]]
    return (q.float() * s).to(torch.bfloat16)


def fp8_target(name):
    """The tensors DeepSeek stores in FP8: every projection of a decoder layer
    (attention, dense MLP, experts, shared experts); not the router, norms,
    embeddings or LM head."""
    return name.startswith("model.layers.") and name.endswith(("proj.weight", "proj_with_mqa.weight"))


def mtp_tensors(config, layer, g):
    """One multi-token-prediction layer's own tensors, numbered after the last
    decoder layer as in R1's checkpoint; transformers ignores them."""
    h = config.hidden_size
    p = f"model.layers.{layer}"
    return {
        f"{p}.enorm.weight": torch.ones(h, dtype=torch.bfloat16),
        f"{p}.hnorm.weight": torch.ones(h, dtype=torch.bfloat16),
        f"{p}.eh_proj.weight": torch.randn(h, 2 * h, generator=g).to(torch.bfloat16),
        f"{p}.shared_head.norm.weight": torch.ones(h, dtype=torch.bfloat16),
    }


def write_dir(out, tensors, config_json, tok, ref):
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    # Two shards and an index, as hub checkpoints are laid out.
    half = len(names) // 2
    index = {}
    for shard, part in enumerate([names[:half], names[half:]]):
        fname = f"model-{shard + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n].contiguous() for n in part}, str(out / fname), metadata={"format": "pt"})
        index.update({n: fname for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": index}, indent=1)
    )
    (out / "config.json").write_text(json.dumps(config_json, indent=1))
    tok.save_pretrained(str(out))
    (out / "generation_config.json").write_text(json.dumps({
        "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
        "do_sample": True, "temperature": 0.6, "top_p": 0.95,
    }, indent=1))
    (out / "reference.json").write_text(json.dumps(ref))
    (out / "complete").write_text(SCRIPT_SHA)
    print(f"ok   {out.name} (min top-2 logit gap {ref['min_top2_gap']:.4f})", file=sys.stderr)


def v3_config(vocab):
    return DeepseekV3Config(
        vocab_size=vocab, hidden_size=192, intermediate_size=320, moe_intermediate_size=64,
        num_hidden_layers=4, first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4,
        n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=3, n_group=4, topk_group=2,
        norm_topk_prob=True, routed_scaling_factor=2.5, q_lora_rank=96, kv_lora_rank=64,
        qk_rope_head_dim=16, qk_nope_head_dim=32, v_head_dim=24, max_position_embeddings=256,
        rope_theta=10000.0,
        rope_scaling={"type": "yarn", "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                      "beta_fast": 32, "beta_slow": 1, "mscale": 0.8, "mscale_all_dim": 0.8},
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
        attn_implementation="eager",
    )


def v2_config(vocab):
    return DeepseekV2Config(
        vocab_size=vocab, hidden_size=160, intermediate_size=288, moe_intermediate_size=48,
        num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4,
        n_routed_experts=6, n_shared_experts=2, num_experts_per_tok=2, n_group=1, topk_group=1,
        topk_method="greedy", norm_topk_prob=False, routed_scaling_factor=1.0, q_lora_rank=None,
        kv_lora_rank=48, qk_rope_head_dim=16, qk_nope_head_dim=24, v_head_dim=32,
        max_position_embeddings=256, rope_theta=10000.0, rope_scaling=None, rms_norm_eps=1e-6,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, attn_implementation="eager",
    )


def stored(model):
    """The checkpoint's tensors: bf16, but the correction bias in f32 as R1
    stores it."""
    return {k: v.detach().to(torch.float32 if k.endswith("e_score_correction_bias") else torch.bfloat16).clone()
            for k, v in model.state_dict().items()}


def f32_model(cls, cfg, tensors):
    """A fresh f32 model holding `tensors`. (Casting a bf16 model back to f32
    would also round its RoPE `inv_freq` buffer through bf16.)"""
    model = cls(cfg).eval()
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    return model


def config_json(model, tok, extra):
    c = model.config.to_dict()
    c.pop("_attn_implementation_autoset", None)
    c.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, torch_dtype="bfloat16")
    c.update(extra)
    return c


def main():
    out_root, names = OUT_ROOT, NAMES
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    template = gguf_chat_template(out_root / R1_HEADER)
    tok = build_tokenizer(template, V3_SPLITS)
    vocab = len(tok)

    # DeepSeek-V3, bf16.
    torch.manual_seed(0)
    cfg = v3_config(vocab)
    model = DeepseekV3ForCausalLM(cfg).eval()
    # The server test splits R1's reasoning from the first prompt's greedy
    # continuation, so the weights are the first seed's whose continuation
    # opens <think> and leaves it open (random weights decide the tokens).
    for seed in range(1, 200):
        randomize(model, seed)
        bf16 = stored(model)
        ref = reference(f32_model(DeepseekV3ForCausalLM, cfg, bf16), tok)
        first = ref["prompts"][0]["greedy"]
        think, end = tok.convert_tokens_to_ids(NON_SPECIAL)
        if think in first and end not in first:
            break
    else:
        sys.exit("no seed below 200 makes the first prompt's continuation open <think>")
    g = torch.Generator().manual_seed(2)
    mtp = mtp_tensors(cfg, cfg.num_hidden_layers, g)
    # R1's config.json names its routing; transformers' config class has no field for it.
    extra = {"num_nextn_predict_layers": 1, "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
             "scoring_func": "sigmoid", "topk_method": "noaux_tc"}
    write_dir(out_root / names[0], {**bf16, **mtp}, config_json(model, tok, extra), tok, ref)

    # The same network in FP8 with block scales; reference on the dequantized weights.
    fp8, deq = {}, {}
    for k, v in bf16.items():
        if fp8_target(k):
            q, s = fp8_quantize(v)
            fp8[k], fp8[k + "_scale_inv"] = q, s
            deq[k] = fp8_dequantize(q, s)
        else:
            fp8[k] = deq[k] = v
    ref = reference(f32_model(DeepseekV3ForCausalLM, cfg, deq), tok)
    extra["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                    "weight_block_size": [BLOCK, BLOCK]}
    write_dir(out_root / names[1], {**fp8, **mtp}, config_json(model, tok, extra), tok, ref)

    # DeepSeek-V2 (V2-Lite's shape of routing), bf16.
    torch.manual_seed(3)
    tok = build_tokenizer(template, V2_SPLITS)
    cfg = v2_config(len(tok))
    model = DeepseekV2ForCausalLM(cfg).eval()
    randomize(model, 4)
    tensors = stored(model)
    ref = reference(f32_model(DeepseekV2ForCausalLM, cfg, tensors), tok)
    extra = {"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "scoring_func": "softmax"}
    write_dir(out_root / names[2], tensors, config_json(model, tok, extra), tok, ref)


if __name__ == "__main__":
    main()
