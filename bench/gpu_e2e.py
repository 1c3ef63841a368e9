#!/usr/bin/env python3
"""gpu_e2e.py — the CUDA engine end to end, as users run it (bench/gpu_check.sh runs it on the
GPU machine): `netlm classify --device cuda` (bf16 and fp32) and `netlm replay` with
model.device = "cuda", each against the same command on the CPU, on the bundled model and
capture.

Checks (exit 1 when one fails):
- fp32 on the GPU: every session gets the CPU's label; scores within 1e-4 (absolute; the
  engine's fp32 logits agree with the CPU to ~1e-5 relative, test_cuda_model);
- bf16: scores within 0.02 absolute (bf16 weights and activations: ~1e-2 relative on logits,
  test_cuda_model); a label may differ only where the CPU's best two scores are closer than that;
- replay: the classification events name the same flows with the same labels (same rule).
Prints one JSON line with the counts and the largest differences.

usage: gpu_e2e.py NETLM MODEL_DIR CAPTURE
"""
import json
import os
import subprocess
import sys
import tempfile

BF16_SCORE_BOUND = 0.02
FP32_SCORE_BOUND = 1e-4


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def classify(netlm, model, capture, *extra):
    rows = {}
    for line in run([netlm, "classify", "-m", model, "--format", "json", "--quiet", *extra, capture]).splitlines():
        r = json.loads(line)
        rows[(r["first_frame"], r["src_port"], r["dest_port"])] = r
    return rows


def replay(netlm, model, capture, conf=None):
    cmd = [netlm, "replay", "-m", model, capture]
    if conf:
        cmd += ["-c", conf]
    events = {}
    for line in run(cmd).splitlines():
        r = json.loads(line)
        if r.get("event_type") == "classification":
            events[r["flow_id"]] = r["classification"]
    return events


def compare(cpu, gpu, bound, key_label, key_scores):
    """(sessions, label mismatches not explained by a near tie, largest score difference)"""
    bad, worst = 0, 0.0
    if set(cpu) != set(gpu):
        return len(cpu), len(set(cpu) ^ set(gpu)), float("inf")
    for k, c in cpu.items():
        g = gpu[k]
        cs, gs = key_scores(c), key_scores(g)
        common = set(cs) & set(gs)
        for label in common:
            worst = max(worst, abs(cs[label] - gs[label]))
        if key_label(c) != key_label(g):
            top = sorted(cs.values(), reverse=True)
            if len(top) < 2 or top[0] - top[1] >= bound:
                bad += 1
    return len(cpu), bad, worst


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    netlm, model, capture = sys.argv[1:]
    label = lambda r: r["label_id"]
    scores = lambda r: {t["label_id"]: t["score"] for t in r["top_k"]}
    cpu = classify(netlm, model, capture, "--device", "cpu", "--top-k", "16")
    fp32 = classify(netlm, model, capture, "--device", "cuda", "--precision", "fp32", "--top-k", "16")
    bf16 = classify(netlm, model, capture, "--device", "cuda", "--top-k", "16")
    n32, bad32, worst32 = compare(cpu, fp32, 0.0, label, scores)
    n16, bad16, worst16 = compare(cpu, bf16, BF16_SCORE_BOUND, label, scores)
    with tempfile.TemporaryDirectory() as tmp:
        conf = os.path.join(tmp, "gpu.conf")
        with open(conf, "w") as f:
            f.write('model: { device = "cuda"; batch_max = 64; };\n')
        ev_cpu = replay(netlm, model, capture)
        ev_gpu = replay(netlm, model, capture, conf)
    nr, badr, worstr = compare(ev_cpu, ev_gpu, BF16_SCORE_BOUND, label, scores)
    ok = (bad32 == 0 and worst32 <= FP32_SCORE_BOUND and bad16 == 0 and worst16 <= BF16_SCORE_BOUND
          and badr == 0 and worstr <= BF16_SCORE_BOUND and n32 > 0 and nr > 0)
    print(json.dumps({"e2e": "ok" if ok else "FAIL", "sessions": n32,
                      "fp32": {"label_mismatches": bad32, "max_score_diff": worst32, "bound": FP32_SCORE_BOUND},
                      "bf16": {"label_mismatches": bad16, "max_score_diff": worst16, "bound": BF16_SCORE_BOUND},
                      "replay": {"events": nr, "label_mismatches": badr, "max_score_diff": worstr}}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
