#!/usr/bin/env python3
"""gpu_e2e.py — the CUDA engine end to end, as users run it (bench/gpu_check.sh runs it on the
GPU machine): `netlm classify --device cuda` (bf16 with the residual stream in bf16, the
default, and in fp32; fp32), `netlm replay` with
model.device = "cuda", and `netlm generate --device cuda`, each against the same command on the
CPU, on the bundled model and capture. No generation model is bundled: the generation checks
use a fresh random one of the bundled model's shape (`netlm convert --config-path`, task
generate) on the seed's header-field task built from the capture (`netlm dataset generation`).

Checks (exit 1 when one fails):
- fp32 on the GPU: every session gets the CPU's label; scores within 1e-4 (absolute; the
  engine's fp32 logits agree with the CPU to ~1e-5 relative, test_cuda_model);
- bf16, with either residual stream (--residual bf16, the default, or fp32): scores within 0.02
  absolute (bf16 weights and activations: ~1e-2 relative on logits, test_cuda_model); a label
  may differ only where the CPU's best two scores are closer than that;
- replay: the classification events name the same flows with the same labels (same rule).
- generate, greedy, fp32 (8 new tokens a row, a KV cache on the GPU): each row's continuation
  equals the CPU's; at most 1 % of rows may differ, because a random model's best two logits can
  be closer than the engine's fp32 error (~1e-6 of the largest logit; over a vocabulary of 65,541
  random logits the two best are ~0.05 σ apart, so about one step in 10⁴ is that close) — a
  defect of the decode path changes most rows. bf16 (greedy) is reported, not checked (a random
  model's near ties are far more common than bf16's error allows); sampled (temperature 0.8,
  top-k 5, fixed seed): two GPU runs must give the same output, and the fp32 run's agreement
  with the CPU's is reported.
- replay with the generation model and model.device = "cuda" (bf16): one generation event per
  flow, the same flows as on the CPU (agreement of the tokens reported).
Prints one JSON line with the counts and the largest differences.

--only pretrain measures instead: `netlm pretrain --device cuda` (bf16) on shards made from the
capture, GPT-2 base at batch 32 and the Qwen2.5-0.5B architecture at batch 16, windows of 511
inputs (512 positions with the last target; `netlm_model_bench --train`'s shapes, but with the
tokenizer's vocabulary of 65,541 where that has 60,005);
each runs 45 steps with a status line every 5, and the steady step is the time between the
status lines of steps 5 and 45 (each line's rate is targets over the seconds since the loop began),
the command's whole loop included (batching, the loss read back, gradient clipping, the status
line), start-up and the saves excluded: a difference of two runs' wall times would carry the
noise of writing a checkpoint of several GB. Prints one JSON line; exit 1 only when a command
fails.

usage: gpu_e2e.py [--only classify|generate|pretrain] NETLM MODEL_DIR CAPTURE
NETLM_E2E_DEVICE=cpu runs the script's own logic without a GPU (every "GPU" command on the CPU).
NETLM_E2E_COMMAND_SECONDS: how long one command may take (120).
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

BF16_SCORE_BOUND = 0.02
FP32_SCORE_BOUND = 1e-4
GEN_FP32_ROW_MISMATCH = 0.01
GEN_ARGS = ["--seq-length", "100", "--tgt-seq-length", "9"]  # [CLS] packet [SEP] + 8 new tokens
DEVICE = os.environ.get("NETLM_E2E_DEVICE", "cuda")
# a command's limit: a GPU needs seconds; the emulated GPU under the sanitizers (ctest) minutes
COMMAND_SECONDS = float(os.environ.get("NETLM_E2E_COMMAND_SECONDS", "120"))
# --precision and --residual are refused without a GPU: the dry run (DEVICE cpu) leaves them out
FP32 = ["--precision", "fp32"] if DEVICE != "cpu" else []
RESIDUAL_FP32 = ["--residual", "fp32"] if DEVICE != "cpu" else []


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_SECONDS)
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


def generate(netlm, model, tsv, *extra):
    """{row: generated text}"""
    out = run([netlm, "generate", "-m", model, "--test-path", tsv, "--format", "json", "--quiet", *GEN_ARGS, *extra])
    return {r["row"]: r["generated"] for r in map(json.loads, out.splitlines())}


def replay_generation(netlm, model, capture, conf=None):
    cmd = [netlm, "replay", "-m", model, capture]
    if conf:
        cmd += ["-c", conf]
    return {r["flow_id"]: r["generation"]["tokens"] for r in map(json.loads, run(cmd).splitlines())
            if r.get("event_type") == "generation"}


def agreement(a, b):
    """(rows, rows that differ); rows missing on either side count as different"""
    keys = set(a) | set(b)
    return len(keys), sum(1 for k in keys if a.get(k) != b.get(k))


def generation_checks(netlm, model, capture, tmp):
    """The generation model, its dataset, and the comparisons; (ok, report)"""
    with open(os.path.join(model, "config.json")) as f:
        c = json.load(f)
    c["netlm"]["task"] = "generate"
    c["netlm"].pop("labels", None)
    c["netlm"].pop("num_labels", None)
    cfg = os.path.join(tmp, "gen.json")
    with open(cfg, "w") as f:
        json.dump(c, f)
    gen = os.path.join(tmp, "gen")
    run([netlm, "convert", "--config-path", cfg, "--to", gen])
    caps = os.path.join(tmp, "captures", "demo")
    os.makedirs(caps)
    os.symlink(os.path.abspath(capture), os.path.join(caps, os.path.basename(capture)))
    ds = os.path.join(tmp, "dataset")
    run([netlm, "dataset", "generation", "--pcap_path", os.path.dirname(caps), "--dataset_dir", ds, "-q"])
    tsv = os.path.join(ds, "train_dataset.tsv")
    gpu = ["--device", DEVICE]
    cpu = generate(netlm, gen, tsv, "--device", "cpu")
    fp32 = generate(netlm, gen, tsv, *gpu, *FP32)
    bf16 = generate(netlm, gen, tsv, *gpu)
    sample = ["--temperature", "0.8", "--top-k", "5", "--seed", "3"]
    s_cpu = generate(netlm, gen, tsv, "--device", "cpu", *sample)
    s_gpu = generate(netlm, gen, tsv, *gpu, *FP32, *sample)
    s_gpu2 = generate(netlm, gen, tsv, *gpu, *FP32, *sample)
    rows, diff32 = agreement(cpu, fp32)
    _, diff16 = agreement(cpu, bf16)
    _, diff_s = agreement(s_cpu, s_gpu)
    _, diff_rerun = agreement(s_gpu, s_gpu2)
    conf = os.path.join(tmp, "gen-gpu.conf")
    with open(conf, "w") as f:
        f.write('model: { device = "%s"; batch_max = 64; };\n' % DEVICE)
    ev_cpu = replay_generation(netlm, gen, capture)
    ev_gpu = replay_generation(netlm, gen, capture, conf)
    events, diff_ev = agreement(ev_cpu, ev_gpu)
    ok = (rows > 0 and diff32 <= GEN_FP32_ROW_MISMATCH * rows and diff_rerun == 0 and events > 0
          and set(ev_cpu) == set(ev_gpu))
    return ok, {"rows": rows, "fp32_rows_differing": diff32, "bound": GEN_FP32_ROW_MISMATCH,
                "bf16_rows_differing": diff16, "sampled_fp32_rows_differing": diff_s,
                "sampled_rerun_rows_differing": diff_rerun, "replay_events": events,
                "replay_same_flows": set(ev_cpu) == set(ev_gpu), "replay_bf16_events_differing": diff_ev}


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


def classify_checks(netlm, model, capture, tmp):
    """classify (fp32, bf16) and replay against the CPU; (ok, report)"""
    label = lambda r: r["label_id"]
    scores = lambda r: {t["label_id"]: t["score"] for t in r["top_k"]}
    cpu = classify(netlm, model, capture, "--device", "cpu", "--top-k", "16")
    fp32 = classify(netlm, model, capture, "--device", DEVICE, *FP32, "--top-k", "16")
    bf16 = classify(netlm, model, capture, "--device", DEVICE, "--top-k", "16")
    bf16_x32 = classify(netlm, model, capture, "--device", DEVICE, *RESIDUAL_FP32, "--top-k", "16")
    n32, bad32, worst32 = compare(cpu, fp32, 0.0, label, scores)
    n16, bad16, worst16 = compare(cpu, bf16, BF16_SCORE_BOUND, label, scores)
    _, bad16x, worst16x = compare(cpu, bf16_x32, BF16_SCORE_BOUND, label, scores)
    conf = os.path.join(tmp, "gpu.conf")
    with open(conf, "w") as f:
        f.write('model: { device = "%s"; batch_max = 64; };\n' % DEVICE)
    ev_cpu = replay(netlm, model, capture)
    ev_gpu = replay(netlm, model, capture, conf)
    nr, badr, worstr = compare(ev_cpu, ev_gpu, BF16_SCORE_BOUND, label, scores)
    ok = (bad32 == 0 and worst32 <= FP32_SCORE_BOUND and bad16 == 0 and worst16 <= BF16_SCORE_BOUND
          and bad16x == 0 and worst16x <= BF16_SCORE_BOUND and badr == 0 and worstr <= BF16_SCORE_BOUND
          and n32 > 0 and nr > 0)
    return ok, {"sessions": n32,
                "fp32": {"label_mismatches": bad32, "max_score_diff": worst32, "bound": FP32_SCORE_BOUND},
                "bf16": {"label_mismatches": bad16, "max_score_diff": worst16, "bound": BF16_SCORE_BOUND},
                "bf16_fp32_residual": {"label_mismatches": bad16x, "max_score_diff": worst16x,
                                       "bound": BF16_SCORE_BOUND},
                "replay": {"events": nr, "label_mismatches": badr, "max_score_diff": worstr}}


PRETRAIN_CONFIGS = {  # name: (config.json, batch, dropout: bench-train's, PyTorch's defaults)
    "gpt2-base": ({"model_type": "gpt2", "vocab_size": 65541, "n_embd": 768, "n_layer": 12, "n_head": 12,
                   "n_inner": 3072, "n_positions": 512}, 32, "0.1"),
    "qwen05b": ({"model_type": "qwen2", "vocab_size": 65541, "hidden_size": 896, "num_hidden_layers": 24,
                 "num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864,
                 "max_position_embeddings": 512, "rope_theta": 1000000.0, "tie_word_embeddings": True}, 16, "0"),
}
# the dry run (NETLM_E2E_DEVICE=cpu) times a small model instead: only the script's logic
PRETRAIN_DRY = ({"model_type": "gpt2", "vocab_size": 65541, "n_embd": 64, "n_layer": 2, "n_head": 2,
                 "n_inner": 128, "n_positions": 512}, 2, "0.1")
PRETRAIN_STEPS = (5, 45)  # status lines between which the step is timed
PRETRAIN_SEQ = 511  # inputs per window: with its next id, 512 positions
STATUS_LINE = re.compile(r"step (\d+)/\d+ .* ([\d.]+) tokens/s")


def pretrain_throughput(netlm, capture, tmp):
    corpus, shard = os.path.join(tmp, "corpus.txt"), os.path.join(tmp, "corpus.shard")
    run([netlm, "corpus", capture, "-o", corpus, "-q"])
    run([netlm, "preprocess", "--corpus_path", corpus, "--dataset_path", shard, "--seq_length",
         str(PRETRAIN_SEQ), "-q"])
    configs = PRETRAIN_CONFIGS if DEVICE != "cpu" else {"dry-small": PRETRAIN_DRY}
    first, last = PRETRAIN_STEPS
    report = {}
    for name, (cfg, batch, dropout) in configs.items():
        path = os.path.join(tmp, name + ".json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        cmd = [netlm, "pretrain", "--dataset_path", shard, "--config_path", path, "--output_model_path",
               os.path.join(tmp, name), "--batch_size", str(batch), "--total_steps", str(last),
               "--report_steps", str(first), "--save_checkpoint_steps", "1000000", "--dropout", dropout,
               "--device", DEVICE]
        t0 = time.monotonic()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        wall = time.monotonic() - t0
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.strip()}")
        # seconds since the loop began at a status line: the targets run so far over its rate
        # (every window is full: 511 targets each)
        since = {}
        for m in STATUS_LINE.finditer(p.stderr):
            step, rate = int(m.group(1)), float(m.group(2))
            since[step] = step * batch * PRETRAIN_SEQ / rate
        if first not in since or last not in since:
            raise SystemExit(f"{' '.join(cmd)}: no status lines for steps {first} and {last}:\n{p.stderr.strip()}")
        step_s = (since[last] - since[first]) / (last - first)
        report[name] = {"batch": batch, "seq": PRETRAIN_SEQ, "dropout": float(dropout),
                        "ms_per_step": round(step_s * 1e3, 2),
                        "tok_per_s": round(batch * PRETRAIN_SEQ / step_s, 1),
                        "first_steps_s": round(since[first], 2), "wall_s": round(wall, 2)}
    return report


def main():
    args = sys.argv[1:]
    only = None
    if len(args) >= 2 and args[0] == "--only" and args[1] in ("classify", "generate", "pretrain"):
        only, args = args[1], args[2:]
    if len(args) != 3:
        raise SystemExit(__doc__)
    netlm, model, capture = args
    if only == "pretrain":
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps({"e2e": "ok", "device": DEVICE, "pretrain": pretrain_throughput(netlm, capture, tmp)}))
        return 0
    ok, report = True, {}
    with tempfile.TemporaryDirectory() as tmp:
        if only != "generate":
            part_ok, part = classify_checks(netlm, model, capture, tmp)
            ok = ok and part_ok
            report.update(part)
        if only != "classify":
            part_ok, part = generation_checks(netlm, model, capture, tmp)
            ok = ok and part_ok
            report["generate"] = dict(part, ok=part_ok)
    print(json.dumps(dict({"e2e": "ok" if ok else "FAIL"}, **report)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
