"""Statistics the benchmark scripts share (standard library only).

scripts/bench and scripts/soak import it by path, as gpu_server.
"""


def pct(xs, p):
    """the p-th percentile of xs: the element at the rounded position
    p/100 of the way through the sorted list; NaN for an empty list"""
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]
