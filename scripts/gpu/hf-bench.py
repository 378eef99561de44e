#!/usr/bin/env python3
"""Decode and prefill rates of Hugging Face transformers on one GPU, the
baseline scripts/bench-gpu compares the engine with.

usage: hf-bench.py --model DIR [--batches 1,8,32,128,256] [--prompt 1,2,..]
                   [--steps 128] [--prefill 512,2048] [--compile]
                   [--json FILE]

The model is loaded with LlamaForCausalLM.from_pretrained in bf16 and
generate() runs greedily with the static KV cache
(cache_implementation="static"), B copies of the prompt, exactly --steps
new tokens (min_new_tokens = max_new_tokens, so no early stop).  Without
--compile, transformers' automatic torch.compile of static-cache decoding
is switched off (disable_compile=True): eager PyTorch.  With --compile it
is left on (its default CompileConfig: inductor, mode "reduce-overhead",
i.e. CUDA graphs); a whole generate() at the batch runs first as warm-up,
so compilation stays outside the timing.  A logits processor
synchronises and stamps the time as each token is chosen; the decode rate
is B x (steps - 1) over the time from the first token to the last, so the
prefill and generate()'s set-up are outside it, as they are for the
engine.  Prefill: one forward pass over N prompt tokens (batch 1), median
of 3 after a warm-up.  A batch that runs out of memory is reported as
such.  Prints one JSON object.
"""

import argparse
import json
import statistics
import sys
import time

import torch
import transformers
from transformers import LlamaForCausalLM, LogitsProcessor, \
    LogitsProcessorList


class Stamp(LogitsProcessor):
    def __init__(self):
        self.t = []

    def __call__(self, input_ids, scores):
        torch.cuda.synchronize()
        self.t.append(time.perf_counter())
        return scores


def load(path):
    try:
        m = LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    except TypeError:
        m = LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16)
    return m.to("cuda").eval()


def decode(model, prompt, batch, steps, compile_):
    ids = torch.tensor([prompt] * batch, device="cuda")
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False,
              max_new_tokens=steps, min_new_tokens=steps, pad_token_id=0,
              cache_implementation="static")
    if not compile_:
        kw["disable_compile"] = True
    st = Stamp()
    with torch.inference_mode():
        # warm-up at this batch (allocator, cuBLAS heuristics); compiled,
        # the whole run, since the static cache's length is in the graph
        w = steps if compile_ else min(steps, 8)
        model.generate(ids, logits_processor=LogitsProcessorList([Stamp()]),
                       **dict(kw, max_new_tokens=w, min_new_tokens=w))
        out = model.generate(ids, logits_processor=LogitsProcessorList([st]),
                             **kw)
    n = len(st.t)
    if n < 2:
        raise RuntimeError("no decode steps timed")
    rate = batch * (n - 1) / (st.t[-1] - st.t[0])
    return rate, out[0, len(prompt):len(prompt) + 16].tolist()


def prefill(model, n, vocab):
    g = torch.Generator(device="cuda").manual_seed(n)
    ids = torch.randint(3, vocab, (1, n), device="cuda", generator=g)
    ts = []
    with torch.inference_mode():
        for i in range(4):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            try:
                model(ids, logits_to_keep=1, use_cache=False)
            except TypeError:
                model(ids, use_cache=False)
            torch.cuda.synchronize()
            if i:
                ts.append(time.perf_counter() - t0)
    return n / statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--batches", default="1,8,32,128,256")
    ap.add_argument("--prompt", default="1,450,4996,17354,1701,3405,9561,"
                    "4955,12,2,830,6,318,8002,2004,42")
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--prefill", default="512,2048")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()

    t0 = time.time()
    model = load(a.model)
    vocab = model.config.vocab_size
    prompt = [int(x) for x in a.prompt.split(",")]
    r = {"transformers": transformers.__version__, "torch": torch.__version__,
         "mode": "torch.compile (transformers' auto-compile)" if a.compile
         else "eager (disable_compile=True)",
         "attn": getattr(model.config, "_attn_implementation", "?"),
         "load_s": round(time.time() - t0, 1), "decode": {}, "prefill": {},
         "tokens": None}
    for b in [int(x) for x in a.batches.split(",") if x]:
        try:
            rate, toks = decode(model, prompt, b, a.steps, a.compile)
            r["decode"][str(b)] = rate
            if b == 1:
                r["tokens"] = toks
        except torch.cuda.OutOfMemoryError:
            r["decode"][str(b)] = "OOM"
            torch.cuda.empty_cache()
        except Exception as e:          # report, go on with the others
            r["decode"][str(b)] = "error: %s" % str(e)[:200]
        print("hf-bench: batch %d: %s" % (b, r["decode"][str(b)]),
              file=sys.stderr, flush=True)
    for n in [int(x) for x in a.prefill.split(",") if x]:
        try:
            r["prefill"][str(n)] = prefill(model, n, vocab)
        except Exception as e:
            r["prefill"][str(n)] = "error: %s" % str(e)[:200]
    print(json.dumps(r))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f)


if __name__ == "__main__":
    main()
