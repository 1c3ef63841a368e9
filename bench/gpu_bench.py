#!/usr/bin/env python3
"""gpu_bench.py — the PyTorch side of the GPU inference benchmark (bench/gpu_check.sh runs it on
the GPU machine, next to `netlm_model_bench --device cuda`).

Hugging Face transformers models with random weights (GPT2Model, Qwen2Model), bf16, SDPA
attention, no KV cache, topped with the classification head netlm runs (mean pooling → Linear →
tanh → Linear → softmax), on the cases of bench/model_bench.c's cuda_cases (same names, same
shapes, all sequences full length). Modes: eager; torch.compile (default mode); torch.compile
with CUDA graphs (mode "reduce-overhead") for the batch-1 latency cases. Inputs already sit on
the GPU (PyTorch's best case; netlm's figures include copying ids in and scores out).

Timing: CUDA events around each call after warm-up, median of --runs. FLOPs: the formula of
model_bench.c (2 per multiply-add of the projections, causal attention over (T+1)/2 keys on
average, LM head not run); MFU against 989 TFLOP/s dense bf16 (H100 SXM).

torch.compile takes tens of seconds per shape: compiled modes run in the order below until
--budget-s seconds have passed since start, the rest are reported as skipped.

Training (the issue's last two rows): causal-LM models (GPT2LMHeadModel, Qwen2ForCausalLM) with
fp32 master weights, bf16 autocast and fused AdamW; one step = forward with the loss, backward,
optimizer step; tokens per second over the median step (bench/model_bench.c --train-cuda runs
the same cases on netlm).

Generation (model_bench.c --generate, the gen-* cases): the causal-LM model (GPT2LMHeadModel,
Qwen2ForCausalLM) in bf16 continues full-length 128-token random prompts by exactly 16 tokens
with HF generate (greedy, KV cache; min_new_tokens keeps EOS from ending a row, as netlm's
ignore_sep): ms per generate call and new tokens per second. Eager uses the default dynamic
cache; "compile" is cache_implementation="static", with which generate compiles the decode step
itself (torch.compile, CUDA graphs), after the other compiled modes while --budget-s lasts.

usage: gpu_bench.py [--out FILE] [--runs N] [--budget-s S] [--only SUBSTRING[,SUBSTRING...]] [--no-compile] [--no-train]
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn as nn

PEAK_TFLOPS = 989.0

# name, arch, layers, hidden, heads, kv_heads, ffn, vocab, batch, seq — bench/model_bench.c
CASES = [
    ("gpt2-base-v60005-b256-t256", "gpt2", 12, 768, 12, 12, 3072, 60005, 256, 256),
    ("gpt2-base-v65541-b512-t128", "gpt2", 12, 768, 12, 12, 3072, 65541, 512, 128),
    ("gpt2-base-v65541-b1-t128", "gpt2", 12, 768, 12, 12, 3072, 65541, 1, 128),
    ("gpt2-small-v65541-b4096-t128", "gpt2", 4, 256, 4, 4, 1024, 65541, 4096, 128),
    ("gpt2-small-v65541-b1-t128", "gpt2", 4, 256, 4, 4, 1024, 65541, 1, 128),
    ("qwen05b-v60005-b256-t256", "qwen2", 24, 896, 14, 2, 4864, 60005, 256, 256),
    ("qwen05b-v60005-b1-t256", "qwen2", 24, 896, 14, 2, 4864, 60005, 1, 256),
]

# name, arch, layers, hidden, heads, kv_heads, ffn, vocab, batch, prompt — model_bench.c's gen_cases
GEN_CASES = [
    ("gen-gpt2-base-b1-p128-n16", "gpt2", 12, 768, 12, 12, 3072, 60005, 1, 128),
    ("gen-gpt2-base-b64-p128-n16", "gpt2", 12, 768, 12, 12, 3072, 60005, 64, 128),
    ("gen-gpt2-small-b1-p128-n16", "gpt2", 4, 256, 4, 4, 1024, 65541, 1, 128),
    ("gen-gpt2-small-b256-p128-n16", "gpt2", 4, 256, 4, 4, 1024, 65541, 256, 128),
    ("gen-qwen05b-b1-p128-n16", "qwen2", 24, 896, 14, 2, 4864, 60005, 1, 128),
    ("gen-qwen05b-b64-p128-n16", "qwen2", 24, 896, 14, 2, 4864, 60005, 64, 128),
]
GEN_NEW = 16

# name, arch, layers, hidden, heads, kv_heads, ffn, vocab, batch, seq — model_bench.c's train cases
TRAIN_CASES = [
    ("train-gpt2-base-v60005-b32-t512", "gpt2", 12, 768, 12, 12, 3072, 60005, 32, 512),
    ("train-qwen05b-v60005-b16-t512", "qwen2", 24, 896, 14, 2, 4864, 60005, 16, 512),
]

# The figures (PyTorch 2.11 + transformers on one H100, 2026-11-26), for the summary.
REFERENCE = {
    "gpt2-base-v60005-b256-t256": {"eager_seq_per_s": 4246, "compile_seq_per_s": 8456},
    "gpt2-base-v65541-b512-t128": {"eager_seq_per_s": 8539, "compile_seq_per_s": 17615},
    "gpt2-base-v65541-b1-t128": {"eager_ms": 6.55, "compile_ms": 2.27, "cudagraphs_ms": 0.54},
    "gpt2-small-v65541-b4096-t128": {"eager_seq_per_s": 83847, "compile_seq_per_s": 242080},
    "gpt2-small-v65541-b1-t128": {"eager_ms": 2.09, "compile_ms": 0.91, "cudagraphs_ms": 0.185},
    "qwen05b-v60005-b256-t256": {"eager_seq_per_s": 1469},
    "qwen05b-v60005-b1-t256": {"eager_ms": 20.7},
    "train-gpt2-base-v60005-b32-t512": {"eager_tok_per_s": 123900},
    "train-qwen05b-v60005-b16-t512": {"eager_tok_per_s": 59700},
}

# Compiled measurements, most important first: (case, mode).
COMPILED = [
    ("gpt2-base-v60005-b256-t256", "compile"),
    ("gpt2-small-v65541-b1-t128", "cudagraphs"),
    ("gpt2-base-v65541-b1-t128", "cudagraphs"),
    ("gpt2-small-v65541-b4096-t128", "compile"),
    ("gpt2-base-v65541-b512-t128", "compile"),
    ("gpt2-base-v65541-b1-t128", "compile"),
    ("gpt2-small-v65541-b1-t128", "compile"),
    ("qwen05b-v60005-b256-t256", "compile"),
]


def flops(case, labels=20):
    _, arch, layers, C, heads, kv, ffn, _, _, T = case
    d = C / heads
    qkv = (heads + 2 * kv) * d
    fw = ffn if arch == "gpt2" else 2 * ffn
    per_token = layers * (2 * C * qkv + 2 * heads * d * C + 2 * C * fw + 2 * ffn * C + 2 * heads * d * (T + 1))
    return per_token * T + 2 * C * C + 2 * C * labels


def backbone(case, lm=False):
    import transformers

    _, arch, layers, C, heads, kv, ffn, vocab, _, _ = case
    if arch == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=1024, n_embd=C, n_layer=layers,
                                      n_head=heads, n_inner=ffn, activation_function="gelu_new",
                                      use_cache=False)
        cls = transformers.GPT2LMHeadModel if lm else transformers.GPT2Model
    else:
        cfg = transformers.Qwen2Config(vocab_size=vocab, hidden_size=C, num_hidden_layers=layers,
                                       num_attention_heads=heads, num_key_value_heads=kv,
                                       intermediate_size=ffn, max_position_embeddings=32768,
                                       rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                       use_cache=False)
        cls = transformers.Qwen2ForCausalLM if lm else transformers.Qwen2Model
    with torch.device("cuda"):
        try:
            model = cls._from_config(cfg, attn_implementation="sdpa")
        except (TypeError, ValueError):
            cfg._attn_implementation = "sdpa"
            model = cls(cfg)
    return model if lm else model.to(torch.bfloat16).eval()


def train_tokens_per_s(case, runs):
    """fp32 master weights, bf16 autocast, fused AdamW: the median step's tokens per second"""
    torch.manual_seed(0)
    model = backbone(case, lm=True).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    g = torch.Generator(device="cuda").manual_seed(2)
    ids = torch.randint(5, case[7], (case[8], case[9]), device="cuda", generator=g)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    ms = time_calls(step, runs, 3)
    del model, opt
    torch.cuda.empty_cache()
    return ms


def gen_ms(case, runs, static):
    """median ms of one generate call continuing the batch's prompts by GEN_NEW tokens each, the
    seconds of the first call (static: it compiles) and whether generate compiled the forward"""
    torch.manual_seed(0)
    model = backbone(case, lm=True).to(torch.bfloat16).eval()
    model.config.use_cache = True
    g = torch.Generator(device="cuda").manual_seed(3)
    ids = torch.randint(5, case[7], (case[8], case[9]), device="cuda", generator=g)
    mask = torch.ones_like(ids)
    kw = {"attention_mask": mask, "max_new_tokens": GEN_NEW, "min_new_tokens": GEN_NEW, "do_sample": False,
          "use_cache": True, "pad_token_id": 0}
    if static:
        kw["cache_implementation"] = "static"

    def call():
        return model.generate(ids, **kw)

    c0 = time.time()
    out = call()
    torch.cuda.synchronize()
    first_s = time.time() - c0
    if out.shape != (case[8], case[9] + GEN_NEW):
        raise RuntimeError(f"generate returned shape {tuple(out.shape)}, not {(case[8], case[9] + GEN_NEW)}")
    ms = time_calls(call, runs, 2)
    # a transformers that does not auto-compile leaves a static-cache eager run: say which it was
    compiled = getattr(model, "_compiled_call", None) is not None
    del model
    torch.cuda.empty_cache()
    return ms, first_s, compiled


def gen_result(case, mode, ms, extra=None):
    name, batch = case[0], case[8]
    r = {"side": "torch", "case": name, "mode": mode, "batch": batch, "prompt": case[9], "new_tokens": GEN_NEW,
         "ms": round(ms, 4), "ms_per_token": round(ms / GEN_NEW, 4),
         "tok_per_s": round(batch * GEN_NEW / ms * 1e3, 1)}
    if extra:
        r.update(extra)
    return r


class Classifier(nn.Module):
    """netlm's classification head on a transformers backbone."""

    def __init__(self, body, hidden, labels=20):
        super().__init__()
        self.body = body
        self.dense = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, labels)

    def forward(self, ids):
        h = self.body(input_ids=ids, use_cache=False).last_hidden_state
        pooled = h.mean(dim=1)
        return torch.softmax(self.out(torch.tanh(self.dense(pooled))).float(), dim=-1)


def time_calls(fn, runs, warmup):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def result(case, mode, ms, extra=None):
    name, _, _, _, _, _, _, _, batch, seq = case
    f = flops(case) * batch
    r = {"side": "torch", "case": name, "mode": mode, "batch": batch, "seq": seq, "ms": round(ms, 4),
         "seq_per_s": round(batch / ms * 1e3, 1), "tok_per_s": round(batch * seq / ms * 1e3, 1),
         "tflops": round(f / ms / 1e9, 2), "mfu": round(f / ms / 1e9 / PEAK_TFLOPS, 4)}
    if extra:
        r.update(extra)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=300.0)
    ap.add_argument("--only")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-train", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    torch.backends.cuda.matmul.allow_tf32 = True
    import transformers

    env = {"side": "torch", "torch": torch.__version__, "transformers": transformers.__version__,
           "device": torch.cuda.get_device_name(0)}
    results = []

    def record(r):
        """prints r and rewrites --out, so a run cut short still leaves its results"""
        if r.get("case") in REFERENCE:
            r["issue_reference"] = REFERENCE[r["case"]]
        print(json.dumps(r), flush=True)
        results.append(r)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)

    record(env)
    wanted = args.only.split(",") if args.only else None

    def chosen(name):
        return not wanted or any(w in name for w in wanted)

    cases = [c for c in CASES if chosen(c[0])]
    models = {}

    def model_for(case):
        key = case[1:8]
        if key not in models:
            models.clear()  # one backbone at a time: the 0.5B one is large
            torch.cuda.empty_cache()
            torch.manual_seed(0)
            body = backbone(case)
            models[key] = Classifier(body, case[3]).to("cuda", torch.bfloat16).eval()
        return models[key]

    def ids_for(case):
        g = torch.Generator(device="cuda").manual_seed(1)
        return torch.randint(5, case[7], (case[8], case[9]), device="cuda", generator=g)

    with torch.inference_mode():
        for case in cases:
            model, ids = model_for(case), ids_for(case)
            try:
                ms = time_calls(lambda: model(ids), args.runs, 3)
                r = result(case, "eager", ms, {"attn": getattr(model.body.config, "_attn_implementation", "?")})
            except Exception as exc:  # noqa: BLE001 (out of memory, missing kernels: report, go on)
                r = {"side": "torch", "case": case[0], "mode": "eager", "error": repr(exc)[:300]}
            record(r)
    models.clear()
    torch.cuda.empty_cache()
    for case in ([] if args.no_train else [c for c in TRAIN_CASES if chosen(c[0])]):
        try:
            ms = train_tokens_per_s(case, max(3, args.runs // 2))
            r = {"side": "torch", "case": case[0], "mode": "eager", "batch": case[8], "seq": case[9],
                 "ms": round(ms, 4), "tok_per_s": round(case[8] * case[9] / ms * 1e3, 1)}
        except Exception as exc:  # noqa: BLE001
            r = {"side": "torch", "case": case[0], "mode": "eager", "error": repr(exc)[:300]}
        record(r)
    gen_cases = [c for c in GEN_CASES if chosen(c[0])]
    with torch.inference_mode():
        for case in gen_cases:
            try:
                ms, _, _ = gen_ms(case, args.runs, static=False)
                r = gen_result(case, "eager", ms)
            except Exception as exc:  # noqa: BLE001
                r = {"side": "torch", "case": case[0], "mode": "eager", "error": repr(exc)[:300]}
            record(r)
    with torch.inference_mode():
        for name, mode in ([] if args.no_compile else COMPILED):
            case = next((c for c in cases if c[0] == name), None)
            if case is None:
                continue
            if time.time() - t0 > args.budget_s:
                record({"side": "torch", "case": name, "mode": mode, "skipped": "time budget"})
                continue
            model, ids = model_for(case), ids_for(case)
            try:
                torch._dynamo.reset()
                compiled = torch.compile(model, mode="reduce-overhead" if mode == "cudagraphs" else None,
                                         dynamic=False)
                c0 = time.time()
                if mode == "cudagraphs":
                    # cudagraph trees: mark each step so replays do not overwrite live outputs
                    def step():
                        torch.compiler.cudagraph_mark_step_begin()
                        return compiled(ids)
                else:
                    def step():
                        return compiled(ids)
                step()
                torch.cuda.synchronize()
                compile_s = time.time() - c0
                ms = time_calls(step, args.runs, 3)
                r = result(case, mode, ms, {"compile_s": round(compile_s, 1)})
            except Exception as exc:  # noqa: BLE001
                r = {"side": "torch", "case": name, "mode": mode, "error": repr(exc)[:300]}
            record(r)
    models.clear()
    torch.cuda.empty_cache()
    with torch.inference_mode():
        for case in ([] if args.no_compile else gen_cases):
            if time.time() - t0 > args.budget_s:
                record({"side": "torch", "case": case[0], "mode": "compile", "skipped": "time budget"})
                continue
            try:
                torch._dynamo.reset()
                ms, first_s, compiled = gen_ms(case, args.runs, static=True)
                r = gen_result(case, "compile", ms, {"cache": "static", "compile_s": round(first_s, 1),
                                                     "auto_compiled": compiled})
            except Exception as exc:  # noqa: BLE001 (a transformers without static-cache compile)
                r = {"side": "torch", "case": case[0], "mode": "compile", "error": repr(exc)[:300]}
            record(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
