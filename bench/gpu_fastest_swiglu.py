#!/usr/bin/env python3
"""gpu_fastest_swiglu.py — the fused SwiGLU GEMM's variant that netlm_gemm_bench timed fastest.

bench/gpu_check.sh runs it after the stage bench-gemm so that the engine's swiglu-fastest variant
uses the best kernel the same run found. Reads the JSON lines of netlm.json and prints the
variant's name (c1, c2-inflight, ...), or 1 (the default variant) when no fused row was timed.

usage: gpu_fastest_swiglu.py NETLM_JSON
"""
import json
import sys

PREFIX = "qwen-mlp-up+swiglu-fused-"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    best = None
    with open(sys.argv[1]) as f:
        for line in f:
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            if r.get("gemm", "").startswith(PREFIX) and "ms" in r and (best is None or r["ms"] < best["ms"]):
                best = r
    print(best["gemm"][len(PREFIX):] if best else "1")


if __name__ == "__main__":
    main()
