#!/usr/bin/python3
"""model_bench.py — the CPU model against the PyTorch twin, same shapes, same thread count, same run.

Runs build/netlm_model_bench and bench/model_twin_bench.py (Debian's python3-torch) for GPT-2
(4 layers x 256, 4 heads, FFN 1024) and Qwen2 (4 x 256, 4/2 heads, SwiGLU 688), vocab 65,541:
classification forward at batch 32 x 128 (sequences/s), batch-1 latency, LM forward, greedy
generation with a KV cache (batch 8 and 1, prompt 64, 64 new tokens). Then the peak RSS of a
Qwen2.5-0.5B-sized model (24 x 896, 14/2 heads, 4864, vocab 65,541) classifying 32 x 128,
measured by GNU time on each side. Prints one JSON object with both sides and the ratios.

Training: forward + backward + AdamW steps on batch 32 x 128 of the GPT-2 config, causal LM
(65,541-way cross-entropy on every position) and classification, tokens/s and peak RSS.

usage: model_bench.py BUILD_DIR [--threads N] [--runs N] [--skip-rss] [--only-train]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def run_json(cmd, env=None):
    """Runs cmd under GNU time; returns (its JSON line, peak RSS MiB)."""
    with tempfile.NamedTemporaryFile(mode="r") as rss_file:
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss_file.name, *cmd],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.decode(errors='replace')[-800:]}")
        rss_kib = int(rss_file.read().split()[-1])
    lines = [l for l in p.stdout.decode().splitlines() if l.startswith("{")]
    return json.loads(lines[-1]), rss_kib / 1024.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("build")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--only-train", action="store_true", help="only the training steps")
    args = ap.parse_args()
    netlm_bench = os.path.join(args.build, "netlm_model_bench")
    twin_bench = os.path.join(HERE, "model_twin_bench.py")
    # both sides get the same threads and nothing else running on them
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads))
    result = {"threads": args.threads, "cpu": cpu_name(), "archs": {}}
    keys = ["classify_seq_per_s", "lm_seq_per_s", "generate_tok_per_s", "generate_batch1_tok_per_s"]
    for arch in ("gpt2",):
        ours, ours_rss = run_json([netlm_bench, "--train", "--arch", arch, "--threads", str(args.threads), "--runs", "5"], env)
        twin, twin_rss = run_json(["/usr/bin/python3", twin_bench, "--train", "--arch", arch, "--threads",
                                   str(args.threads), "--runs", "5", "--json"], env)
        ratios = {k: round(ours[k] / twin[k], 2) for k in ("lm_train_tok_per_s", "classify_train_tok_per_s")}
        result.setdefault("train", {})[arch] = {"netlm": dict(ours, gnu_time_peak_rss_mib=round(ours_rss, 1)),
                                                "pytorch": dict(twin, gnu_time_peak_rss_mib=round(twin_rss, 1)),
                                                "netlm_over_pytorch": ratios}
        print(f"{arch} training: " + ", ".join(f"{k} x{v}" for k, v in ratios.items())
              + f"; peak RSS netlm {ours_rss:.0f} MiB, pytorch {twin_rss:.0f} MiB", file=sys.stderr)
    if args.only_train:
        print(json.dumps(result, indent=1))
        return
    for arch in ("gpt2", "qwen2"):
        ours, _ = run_json([netlm_bench, "--arch", arch, "--threads", str(args.threads), "--runs", str(args.runs)], env)
        twin, _ = run_json(["/usr/bin/python3", twin_bench, "--arch", arch, "--threads", str(args.threads), "--json"], env)
        ratios = {k: round(ours[k] / twin[k], 2) for k in keys if twin.get(k)}
        if twin.get("classify_batch1_ms"):
            ratios["classify_batch1_speedup"] = round(twin["classify_batch1_ms"] / ours["classify_batch1_ms"], 2)
        result["archs"][arch] = {"netlm": ours, "pytorch": twin, "netlm_over_pytorch": ratios}
        print(f"{arch}: " + ", ".join(f"{k} x{v}" for k, v in ratios.items()), file=sys.stderr)
    if not args.skip_rss:
        ours, ours_rss = run_json([netlm_bench, "--qwen05b-rss", "--threads", str(args.threads)], env)
        twin, twin_rss = run_json(["/usr/bin/python3", twin_bench, "--qwen05b-rss", "--threads", str(args.threads), "--json"], env)
        result["qwen05b_rss"] = {"netlm": dict(ours, gnu_time_peak_rss_mib=round(ours_rss, 1)),
                                 "pytorch": dict(twin, gnu_time_peak_rss_mib=round(twin_rss, 1))}
        print(f"qwen2.5-0.5B-sized 32x128 classify: peak RSS netlm {ours_rss:.0f} MiB, pytorch {twin_rss:.0f} MiB",
              file=sys.stderr)
    print(json.dumps(result, indent=1))


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
