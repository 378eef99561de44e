#!/usr/bin/env python3
"""Measure the two ceilings of this GPU with PyTorch: memory bandwidth and
bf16 matrix rate.

usage: ceilings.py [--copy-gb 2] [--json FILE]

Bandwidth: a device-to-device copy of --copy-gb GB, timed with CUDA events
over 20 copies after 3 warm-ups (median), counting bytes read plus bytes
written.  Matrix rate: an 8192x8192x8192 bf16 product on random data,
median of 10 after 3 warm-ups.  Prints one JSON object.
"""

import argparse
import json
import statistics

import torch


def timed(fn, warm, reps):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = (torch.cuda.Event(enable_timing=True),
                torch.cuda.Event(enable_timing=True))
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e-3)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copy-gb", type=float, default=2.0)
    ap.add_argument("--json")
    a = ap.parse_args()

    n = int(a.copy_gb * 1e9) // 2
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    t = timed(lambda: dst.copy_(src), 3, 20)
    bw = 2 * n * 2 / t
    assert torch.equal(dst[:1000], src[:1000])
    del src, dst

    m = 8192
    x = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    t = timed(lambda: torch.mm(x, y), 3, 10)
    flops = 2 * m ** 3 / t
    del x, y
    torch.cuda.empty_cache()

    p = torch.cuda.get_device_properties(0)
    r = {"gpu": p.name, "sms": p.multi_processor_count,
         "mem_gib": round(p.total_memory / 2 ** 30, 1),
         "torch": torch.__version__, "copy_bytes": 2 * n,
         "bandwidth_Bps": bw, "bf16_flops": flops}
    print(json.dumps(r))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f)


if __name__ == "__main__":
    main()
