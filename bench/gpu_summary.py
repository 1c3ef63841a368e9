#!/usr/bin/env python3
"""gpu_summary.py — the table bench/gpu_check.sh prints last: netlm against PyTorch per case, the
variants, the kernels the engine chose (and their candidates' times), the step profiles and the
GEMMs one by one, then each stage's status.

Reads OUT_DIR/netlm.json (JSON lines between the stages' headers), OUT_DIR/torch.json (from
gpu_bench.py, when PyTorch ran) and OUT_DIR/gpu_check.json.

usage: gpu_summary.py OUT_DIR
"""
import json
import os
import sys


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    out = sys.argv[1]
    netlm, torch_r = {}, {}
    variants, profiles, gemms, candidates, last_case = {}, [], [], [], None
    for line in open(os.path.join(out, "netlm.json")):
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            if "gemm" in r:
                gemms.append(r)
            elif "gemm_candidate" in r:
                candidates.append(r)
            elif "cuda_profile" in r:
                profiles.append((last_case, r["cuda_profile"]))
            elif "case" in r:
                last_case = r["case"]
                if "variant" in r:
                    variants.setdefault(r["variant"], {})[r["case"]] = r
                else:
                    netlm[r["case"]] = r
    path = os.path.join(out, "torch.json")
    if os.path.exists(path):
        for r in json.load(open(path)):
            if "case" in r:
                torch_r[(r["case"], r.get("mode"))] = r
    cases = sorted(set(netlm) | {c for c, _ in torch_r}, key=lambda c: list(netlm).index(c) if c in netlm else 99)

    def cell(r, latency):
        if not r:
            return "-"
        if "error" in r:
            return "error"
        if "skipped" in r:
            return "skipped"
        if r.get("case", "").startswith("gen-"):  # a generate call: one sequence's latency, else new tokens/s
            return f"{r['ms']:.2f} ms" if latency else f"{r['tok_per_s']:,.0f} tok/s"
        if "seq_per_s" not in r:
            return f"{r['tok_per_s']:,.0f} tok/s"
        return f"{r['ms']:.3f} ms" if latency else f"{r['seq_per_s']:,.0f}/s"

    print()
    print(f"{'case':32} {'netlm bf16':>14} {'mfu':>6} {'torch eager':>14} {'compile':>14} {'cudagraphs':>14} {'x eager':>8} {'x compile':>9}")
    for c in cases:
        lat = "-b1-" in c
        n = netlm.get(c)
        e, k, g = torch_r.get((c, "eager")), torch_r.get((c, "compile")), torch_r.get((c, "cudagraphs"))

        def ratio(t):
            if not n or "ms" not in n or not t or "ms" not in t:
                return "-"
            return f"{t['ms'] / n['ms']:.2f}"

        best = g if g and "ms" in g else k
        print(f"{c:32} {cell(n, lat):>14} {n.get('mfu', 0) if n else 0:>6.3f} {cell(e, lat):>14} {cell(k, lat):>14} "
              f"{cell(g, lat):>14} {ratio(e):>8} {ratio(best):>9}")
    print("(x eager / x compile: PyTorch time over netlm time, > 1 = netlm faster; x compile uses the CUDA-graph figure where there is one)")
    print("(gen-*: one generate call, 16 new tokens per row: ms at batch 1, new tokens/s at larger batches; torch compile = static cache)")
    for name, rows in variants.items():
        if name == "profile":
            continue
        print(f"\nvariant {name}: ms (default ms), x PyTorch eager where it ran")
        for c, r in rows.items():
            base = netlm.get(c, {}).get("ms")
            e = torch_r.get((c, "eager"))
            xe = f"  x eager {e['ms'] / r['ms']:.2f}" if e and "ms" in e and "ms" in r else ""
            print(f"  {c:32} {r.get('ms', float('nan')):10.4f} ({base if base is not None else '-'}){xe}")
    chosen = [(c, r["kernels"]) for c, r in netlm.items() if r.get("kernels")]
    if chosen:
        print("\nkernels the engine chose per class of shapes (first pass of each; ms per candidate, layer 0):")
        for c, k in chosen:
            for step in ("mlp_up", "attention"):
                for choice in k.get(step, []):
                    shape = " ".join(f"{key} {v}" for key, v in choice.items() if key.endswith("_up_to"))
                    shape += " (classify)" if choice.get("classify") else ""
                    times = ", ".join(f"{name} {ms:.4f}" for name, ms in sorted(choice["ms"].items(), key=lambda kv: kv[1]))
                    rejected = choice.get("rejected")
                    rejected = f"  REJECTED (result disagrees): {', '.join(rejected)}" if rejected else ""
                    print(f"  {c:32} {step:9} {shape:34} {choice['pick']:16} {times or '(not timed)'}{rejected}")
    if profiles:
        print("\ntime per kind of step, ms per call (eager, no graphs):")
        for c, p in profiles:
            steps = ", ".join(f"{k} {v:.3f}" for k, v in sorted(p["steps"].items(), key=lambda kv: -kv[1]))
            print(f"  {c}: {p['ms_per_call']:.3f} ms = {steps}")
    if gemms:
        print("\nGEMMs one by one (netlm_gemm_bench): ms, TFLOP/s")
        for r in gemms:
            if "skipped" in r:
                print(f"  {r['gemm']:38} skipped: {r['skipped']}")
                continue
            extra = f"  max_rel_diff {r['max_rel_diff']:.2g}" if "max_rel_diff" in r else ""
            print(f"  {r['gemm']:38} {r['algorithm']:16} {r['ms']:9.4f} {r['tflops']:7.1f}{extra}")
    if candidates:
        print("\ncuBLASLt's candidates per GEMM shape, the 3 fastest and the heuristic's first "
              "(ids: cublasLt.h's tile, stages and cluster-shape enums)")
        shapes = {}
        for r in candidates:
            shapes.setdefault((r["m"], r["n"], r["k"]), {})[r["gemm_candidate"]] = r  # the last timing of a rank
        for (m, n, k), ranks in sorted(shapes.items()):
            timed = sorted((r for r in ranks.values() if r["ms"] >= 0), key=lambda r: r["ms"])
            shown = timed[:3] + [r for r in timed[3:] if r["gemm_candidate"] == 0]
            for r in shown:
                ids = " ".join(f"{key} {r[key]}" for key in ("algo_id", "tile_id", "stages_id", "cluster_id", "swizzle",
                                                          "splitk") if key in r)
                print(f"  m {m} n {n} k {k}: #{r['gemm_candidate']} {r['ms']:.4f} ms ({len(ranks)} candidates)  {ids}")
    st = os.path.join(out, "gpu_check.json")
    if os.path.exists(st):
        print()
        for s in json.load(open(st)):
            print(f"  {s['stage']:28} {s['status']:8} {s['seconds']:>5}s")


if __name__ == "__main__":
    main()
