#!/usr/bin/python3
"""model_twin_bench.py — what PyTorch eager gives on this CPU for netlm's model workloads, using
the twin's module code (tests/reference/modeling.py: fused GPT-2 c_attn like HF Conv1D,
matmul + softmax attention with a causal mask as HF's eager path, static KV cache).

Random weights (no files). Prints one JSON object:
  classify_seq_per_s         batch 32 x 128: backbone + mean pooling + classifier head
  classify_batch1_ms         batch 1 x 128, milliseconds
  lm_seq_per_s               batch 32 x 128 with the LM head on every position
  generate_tok_per_s         greedy with KV cache, batch 8, prompt 64, 64 new tokens, no early
                             stop: 8 * 64 / time of prefill + decode loop
  generate_batch1_tok_per_s  the same at batch 1
Each figure is the median of --runs timed runs (default 5) after 2 warm-ups.

usage: model_twin_bench.py --arch gpt2|qwen2 --threads N [--json] [--runs N] [--train]
       model_twin_bench.py --qwen05b-rss --threads N    peak RSS of one classify forward, batch
                                                        32 x 128, Qwen2.5-0.5B-sized weights
Run with /usr/bin/python3 (Debian python3-torch).
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))

torch = M = None  # imported in main(), after the thread count is in the environment

VOCAB = 65541
LABELS = [f"c{i}" for i in range(10)]


def config(arch):
    if arch == "gpt2":
        return M.Config(arch="gpt2", vocab_size=VOCAB, hidden=256, layers=4, heads=4, ffn=1024, max_positions=256,
                        norm_eps=1e-5, norm="standard", act="gelu_tanh", task="classify", labels=LABELS)
    if arch == "qwen2":
        return M.Config(arch="qwen2", vocab_size=VOCAB, hidden=256, layers=4, heads=4, kv_heads=2, ffn=688,
                        max_positions=256, rope_theta=1e6, norm_eps=1e-6, tie=True, norm="rms", act="silu",
                        task="classify", labels=LABELS)
    if arch == "qwen05b":
        return M.Config(arch="qwen2", vocab_size=VOCAB, hidden=896, layers=24, heads=14, kv_heads=2, ffn=4864,
                        max_positions=32768, rope_theta=1e6, norm_eps=1e-6, tie=True, norm="rms", act="silu",
                        task="classify", labels=LABELS)
    raise ValueError(arch)


def config_json(cfg, model):
    return {"layers": cfg.layers, "hidden": cfg.hidden, "heads": cfg.heads, "kv_heads": cfg.kv_heads,
            "ffn": cfg.ffn, "max_positions": cfg.max_positions, "vocab_size": cfg.vocab_size, "tied": cfg.tie,
            "labels": len(cfg.labels), "parameters": sum(p.numel() for p in model.parameters())}


def make(arch, seed=1):
    cfg = config(arch)
    model = M.build_model(cfg)
    M.init_random(model, torch.Generator().manual_seed(seed))  # the seed's N(0, 0.02)
    return cfg, model.eval()


def batch(cfg, b, t, seed=2):
    ids = torch.randint(5, cfg.vocab_size, (b, t), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = M.CLS_ID
    return ids, torch.full((b,), t, dtype=torch.long)


def median_time(fn, runs, warmup=2):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench(arch, threads, runs):
    torch.set_num_threads(threads)
    cfg, model = make(arch)
    res = {"arch": arch, "threads": threads, "config": config_json(cfg, model),
           "torch": torch.__version__, "runs": runs, "loadavg_1m_before": round(os.getloadavg()[0], 2)}
    with torch.inference_mode():
        ids, lens = batch(cfg, 32, 128)
        t = median_time(lambda: model.classify(ids, lens, "mean"), runs)
        res["classify_seq_per_s"] = round(32 / t, 2)
        ids1, lens1 = batch(cfg, 1, 128)
        t = median_time(lambda: model.classify(ids1, lens1, "mean"), runs)
        res["classify_batch1_ms"] = round(1000 * t, 3)
        t = median_time(lambda: model.lm_logits(model.backbone(ids)), runs)
        res["lm_seq_per_s"] = round(32 / t, 2)
        for name, b in (("generate_tok_per_s", 8), ("generate_batch1_tok_per_s", 1)):
            pids, plens = batch(cfg, b, 64)
            t = median_time(lambda: model.generate(pids, plens, 64, early_stop=False), runs)
            res[name] = round(b * 64 / t, 2)
    # other work on the same cores slows OpenMP regions down a lot (each waits for its slowest
    # thread): compare figures only from runs with a low load average
    res["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    return res


def train_bench(arch, threads, runs):
    """Training steps as netlm_model_bench --train times them: forward, backward and an AdamW
    step (torch.optim.AdamW, lr 1e-4, decay 0.01) on batch 32 x 128, for the causal-LM objective
    (every next token, cross-entropy over the 65,541-token vocabulary) and for classification."""
    torch.set_num_threads(threads)
    cfg, model = make(arch)
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    ids, lens = batch(cfg, 32, 128)
    labels = torch.arange(32) % len(cfg.labels)

    def lm_step():
        opt.zero_grad(set_to_none=True)
        logits = model.lm_logits(model.backbone(ids))
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()

    def cls_step():
        opt.zero_grad(set_to_none=True)
        out = model.classify(ids, lens, "mean")
        scores = out[1] if isinstance(out, tuple) else out
        logits = out[2] if isinstance(out, tuple) and len(out) > 2 else None
        if logits is None:
            loss = torch.nn.functional.nll_loss(torch.log(scores), labels)
        else:
            loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        opt.step()

    t_lm = median_time(lm_step, runs)
    t_cls = median_time(cls_step, runs)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"side": "pytorch", "mode": "train", "arch": arch, "threads": threads, "batch": 32, "seq": 128,
            "lm_train_tok_per_s": round(32 * 128 / t_lm, 1), "classify_train_tok_per_s": round(32 * 128 / t_cls, 1),
            "peak_rss_mib": round(peak_kib / 1024, 1), "torch": torch.__version__}


def qwen05b_rss(threads):
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    cfg, model = make("qwen05b")
    built = time.perf_counter() - t0
    with torch.inference_mode():
        ids, lens = batch(cfg, 32, 128)
        t0 = time.perf_counter()
        _, scores = model.classify(ids, lens, "mean")
        fwd = time.perf_counter() - t0
    assert scores.shape == (32, len(cfg.labels))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    params = sum(p.numel() for p in model.parameters())
    return {"mode": "qwen05b-rss", "threads": threads, "config": config_json(cfg, model),
            "weights_mib": round(params * 4 / 2**20, 1), "build_s": round(built, 2),
            "classify_32x128_s": round(fwd, 2), "peak_rss_mib": round(peak_kib / 1024, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=("gpt2", "qwen2"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="one compact JSON line (default: indented)")
    ap.add_argument("--qwen05b-rss", action="store_true")
    ap.add_argument("--train", action="store_true", help="training steps instead of inference")
    a = ap.parse_args()
    if a.threads < 1 or a.runs < 5:
        ap.error("--threads >= 1 and --runs >= 5")
    # Debian's torch does its GEMMs in OpenBLAS (pthreads), whose pool torch.set_num_threads does
    # not resize: fix both pools before the libraries load.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(a.threads)
    global torch, M
    import torch
    import modeling as M
    if a.qwen05b_rss:
        res = qwen05b_rss(a.threads)
    elif a.arch and a.train:
        res = train_bench(a.arch, a.threads, a.runs)
    elif a.arch:
        res = bench(a.arch, a.threads, a.runs)
    else:
        ap.error("--arch or --qwen05b-rss")
    print(json.dumps(res) if a.json else json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
