#!/usr/bin/env python3
"""Write a random-weight, real-sized Llama-architecture model (bf16).

usage: make-random-model.py --preset NAME --out DIR [--seed 1] [--dtype bf16]
       make-random-model.py --out DIR --hidden 2048 --intermediate 8192
                            --layers 16 --heads 32 --kv-heads 8 --vocab V ...

Presets (shapes only; the weights are random, the text gibberish):
  llama-3.2-1b   Llama-3.2-1B's shapes: hidden 2048, intermediate 8192,
                 16 layers, 32 heads, 8 KV heads, head_dim 64, vocab
                 128256, rope_theta 500000, tied embeddings.  Plain RoPE:
                 the real model's "llama3" rope_scaling is left out (the
                 loader refuses it, and it changes no shape or cost).
  qwen2.5-0.5b   Qwen2.5-0.5B's sizes as a Llama config: hidden 896,
                 intermediate 4864, 24 layers, 14 heads, 2 KV heads,
                 head_dim 64, vocab 151936, tied (no q/k/v biases).
  tiny           hidden 256, 4 layers, vocab 1024: for checking the
                 benchmark scripts on a CPU.

The tokenizer is scripts/make-random-llama's (354 pieces); config.json's
vocab_size is the preset's, larger, which the backend accepts (the
embedding and LM head have the full size, so the cost is the real one).
Uses PyTorch (on the GPU when there is one, a 1B model takes seconds)
or, without it, numpy.  Standard safetensors layout, readable by
Hugging Face transformers too.
"""

import argparse
import importlib.machinery
import importlib.util
import json
import os
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

PRESETS = {
    "llama-3.2-1b": dict(hidden=2048, intermediate=8192, layers=16, heads=32,
                         kv_heads=8, head_dim=64, vocab=128256,
                         rope_theta=500000.0, eps=1e-5, ctx=8192),
    "qwen2.5-0.5b": dict(hidden=896, intermediate=4864, layers=24, heads=14,
                         kv_heads=2, head_dim=64, vocab=151936,
                         rope_theta=1000000.0, eps=1e-6, ctx=8192),
    "tiny": dict(hidden=256, intermediate=688, layers=4, heads=8, kv_heads=2,
                 head_dim=32, vocab=1024, rope_theta=10000.0, eps=1e-5,
                 ctx=4096),
}


def load_make_random_llama():
    path = os.path.join(os.path.dirname(HERE), "make-random-llama")
    loader = importlib.machinery.SourceFileLoader("make_random_llama", path)
    spec = importlib.util.spec_from_loader("make_random_llama", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def shapes(c):
    h, hd = c["hidden"], c["head_dim"]
    q, kv = c["heads"] * hd, c["kv_heads"] * hd
    out = [("model.embed_tokens.weight", [c["vocab"], h], 0.02)]
    lin = 0.5 / h ** 0.5
    for i in range(c["layers"]):
        p = "model.layers.%d." % i
        out += [
            (p + "input_layernorm.weight", [h], None),
            (p + "self_attn.q_proj.weight", [q, h], lin),
            (p + "self_attn.k_proj.weight", [kv, h], lin),
            (p + "self_attn.v_proj.weight", [kv, h], lin),
            (p + "self_attn.o_proj.weight", [h, q], 0.5 / q ** 0.5),
            (p + "post_attention_layernorm.weight", [h], None),
            (p + "mlp.gate_proj.weight", [c["intermediate"], h], lin),
            (p + "mlp.up_proj.weight", [c["intermediate"], h], lin),
            (p + "mlp.down_proj.weight", [h, c["intermediate"]],
             0.5 / c["intermediate"] ** 0.5),
        ]
    out.append(("model.norm.weight", [h], None))
    if not c.get("tied", True):
        out.append(("lm_head.weight", [c["vocab"], h], lin))
    return out


class TorchGen:
    def __init__(self, seed, dtype):
        import torch
        self.torch = torch
        self.dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.g = torch.Generator(device=self.dev).manual_seed(seed)
        self.dt = {"bf16": torch.bfloat16, "f16": torch.float16,
                   "f32": torch.float32}[dtype]

    def tensor(self, shape, std):
        t = self.torch
        if std is None:
            x = t.ones(shape, dtype=self.dt, device=self.dev)
        else:
            x = t.randn(shape, generator=self.g, device=self.dev,
                        dtype=t.float32).mul_(std).to(self.dt)
        x = x.contiguous().cpu()
        return x.view(t.uint8).numpy().tobytes() if x.dtype != t.float32 \
            else x.numpy().tobytes()


class NumpyGen:
    def __init__(self, seed, dtype):
        import numpy as np
        self.np = np
        self.rng = np.random.default_rng(seed)
        self.dtype = dtype

    def tensor(self, shape, std):
        np = self.np
        n = 1
        for d in shape:
            n *= d
        x = (np.ones(n, np.float32) if std is None
             else self.rng.standard_normal(n, np.float32) * np.float32(std))
        if self.dtype == "f32":
            return x.astype("<f4").tobytes()
        if self.dtype == "f16":
            return x.astype("<f2").tobytes()
        u = x.view(np.uint32).astype(np.uint64)       # round to nearest even
        u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        return u.astype("<u2").tobytes()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", choices=sorted(PRESETS))
    for k in ("hidden", "intermediate", "layers", "heads", "kv-heads",
              "head-dim", "vocab", "ctx"):
        ap.add_argument("--" + k, type=int)
    ap.add_argument("--rope-theta", type=float)
    ap.add_argument("--untied", action="store_true")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--numpy", action="store_true",
                    help="use numpy even where PyTorch is installed")
    a = ap.parse_args()

    c = dict(PRESETS[a.preset]) if a.preset else dict(
        rope_theta=10000.0, eps=1e-5, ctx=4096)
    for k in ("hidden", "intermediate", "layers", "heads", "kv_heads",
              "head_dim", "vocab", "ctx", "rope_theta"):
        v = getattr(a, k)
        if v is not None:
            c[k] = v
    if "head_dim" not in c and "hidden" in c and "heads" in c:
        c["head_dim"] = c["hidden"] // c["heads"]
    missing = [k for k in ("hidden", "intermediate", "layers", "heads",
                           "kv_heads", "vocab") if k not in c]
    if missing:
        sys.exit("make-random-model: give --preset or --%s"
                 % " --".join(m.replace("_", "-") for m in missing))
    c["tied"] = not a.untied

    mrl = load_make_random_llama()
    pieces = mrl.tokenizer_pieces()
    if c["vocab"] < len(pieces):
        sys.exit("make-random-model: vocab must be at least %d" % len(pieces))

    gen = None
    if not a.numpy:
        try:
            gen = TorchGen(a.seed, a.dtype)
        except ImportError:
            gen = None
    if gen is None:
        gen = NumpyGen(a.seed, a.dtype)

    t0 = time.time()
    st = {"bf16": "BF16", "f16": "F16", "f32": "F32"}[a.dtype]
    esz = 4 if a.dtype == "f32" else 2
    spec = shapes(c)
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, _ in spec:
        n = esz
        for d in shape:
            n *= d
        header[name] = {"dtype": st, "shape": shape,
                        "data_offsets": [off, off + n]}
        off += n
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for name, shape, std in spec:
            f.write(gen.tensor(shape, std))

    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": c["hidden"], "intermediate_size": c["intermediate"],
        "num_hidden_layers": c["layers"],
        "num_attention_heads": c["heads"],
        "num_key_value_heads": c["kv_heads"], "head_dim": c["head_dim"],
        "vocab_size": c["vocab"], "max_position_embeddings": c["ctx"],
        "rms_norm_eps": c["eps"], "rope_theta": c["rope_theta"],
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": c["tied"], "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": {"bf16": "bfloat16", "f16": "float16",
                        "f32": "float32"}[a.dtype],
        "ngx_gpu_note": "random weights from scripts/gpu/make-random-model.py "
                        "(preset %s); its output is gibberish" % a.preset,
    }
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    with open(os.path.join(a.out, "tokenizer.json"), "w",
              encoding="utf-8") as f:
        json.dump(mrl.tokenizer_json(pieces), f, ensure_ascii=False)
    params = 0
    for _, shape, _ in spec:
        n = 1
        for d in shape:
            n *= d
        params += n
    print("make-random-model: wrote %s (%s, %.3fG parameters, %.2f GB, "
          "%s, %.1f s)" % (a.out, a.preset or "custom", params / 1e9,
                           off / 1e9, type(gen).__name__, time.time() - t0))


if __name__ == "__main__":
    main()
