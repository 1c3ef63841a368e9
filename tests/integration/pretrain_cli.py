#!/usr/bin/python3
"""pretrain_cli.py — netlm pretrain end to end on real traffic: a corpus from a real capture
(netlm corpus), tokenized into two shards (netlm preprocess), pretrains a tiny GPT-2 with
gradient accumulation across an epoch end. It must learn (the reported loss falls clearly),
accept the seed's command-line flags silently, write a model that netlm generate runs, and a run
stopped mid-epoch and resumed must end with the same bytes as the uninterrupted one. Bad inputs
end with one error line and leave no output behind. QwenNet's command line (--use_qwen
--qwen_model_name Qwen/...) starts from that Hugging Face checkpoint as found in the Hugging Face
cache, its embedding cut to the traffic vocabulary's first rows as the seed's
resize_token_embeddings does."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.environ.get("NETLM_SOURCE_DIR", os.path.join(HERE, "..", "..")), "tests", "reference"))
import st  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (check, finish, hf_qwen_checkpoint, loss_column, mpirun, netlm,  # noqa: E402
                    one_error_line, worst_relative)

NETLM = os.environ["NETLM"]
DATA = os.environ["NETLM_DATA_DIR"]


def pretrain_args(tmp, out, *extra):
    # 238 windows of 32 ids; 30 steps of 2 x 4 windows read 240: the last step crosses into epoch 2
    return ["pretrain", "--dataset_path", os.path.join(tmp, "a.shard"), os.path.join(tmp, "b.shard"),
            "--config_path", os.path.join(tmp, "tiny.json"), "--output_model_path", out,
            "--batch_size", "4", "--accumulation_steps", "2", "--total_steps", "30", "--learning_rate", "1e-2",
            "--report_steps", "5", "--save_checkpoint_steps", "10", "--threads", "2", "--seed", "3", *extra]


def pretrain(tmp, out, *extra, ok=True):
    return netlm(*pretrain_args(tmp, out, *extra), ok=ok)


def interrupted_run(tmp, uninterrupted):
    """SIGTERM (systemctl stop, a batch scheduler's time limit) while training: the step under way
    ends, a checkpoint of it is written, the exit status is a terminated run's, and --resume then
    ends where the uninterrupted run ended, bit for bit."""
    out = os.path.join(tmp, "term")
    run = subprocess.Popen([NETLM, *pretrain_args(tmp, out, "-q")], stderr=subprocess.PIPE, text=True)
    state_path = os.path.join(out, "checkpoint", "state.json")
    deadline = time.time() + 300
    while not os.path.exists(state_path) and run.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    run.send_signal(signal.SIGTERM)  # the first checkpoint (step 10) is there: 20 steps to go
    err = run.communicate()[1]
    state = json.load(open(state_path))
    rows = open(os.path.join(out, "loss.csv")).read().splitlines()[1:]
    check("SIGTERM: the step under way ends with a checkpoint of it, exit status 143, one line saying so",
          run.returncode == 128 + signal.SIGTERM and 10 <= state["step"] < 30 and len(rows) == state["step"]
          and err.strip() == f"netlm pretrain: interrupted (Terminated) after step {state['step']}: checkpoint "
          "written; --resume continues", f"rc {run.returncode}, step {state['step']}, {len(rows)} rows: {err}")
    check("... no temporary files, no model", not [f for d in (out, os.path.join(out, "checkpoint"))
                                                   for f in os.listdir(d) if ".tmp" in f or f.endswith(".new")]
          and not os.path.exists(os.path.join(out, "model.safetensors")), os.listdir(out))
    pretrain(tmp, out, "-q", "--resume")
    differ = same_bytes(uninterrupted, out, ("model.safetensors",), ("loss.csv",), ("checkpoint", "state.json"),
                        ("checkpoint", "optimizer.safetensors"))
    check("interrupted + resumed = uninterrupted, bit for bit", not differ, f"{differ} differ")


def same_bytes(a, b, *paths):
    return [os.path.join(*p) for p in paths
            if open(os.path.join(a, *p), "rb").read() != open(os.path.join(b, *p), "rb").read()]


def hf_cache_with_qwen(tmp):
    """A Hugging Face cache ($HF_HOME/hub) holding a tiny Qwen2 checkpoint as the hub id
    Qwen/Tiny-Qwen, with a 70,000-row embedding; returns (HF_HOME, its embedding)."""
    base = hf_qwen_checkpoint(tmp, "qwen-base", hidden=64)
    tensors, _ = st.read(os.path.join(base, "model.safetensors"))
    arrays = {k: v.to_numpy() for k, v in tensors.items()}
    emb = arrays["model.embed_tokens.weight"]
    emb = np.concatenate([emb, np.random.default_rng(2).normal(0, 0.02, (70000 - emb.shape[0], emb.shape[1]))
                          .astype(np.float32)])
    arrays["model.embed_tokens.weight"] = emb
    home = os.path.join(tmp, "hf")
    repo = os.path.join(home, "hub", "models--Qwen--Tiny-Qwen")
    snap = os.path.join(repo, "snapshots", "0123abcd")
    os.makedirs(snap)
    os.makedirs(os.path.join(repo, "refs"))
    open(os.path.join(repo, "refs", "main"), "w").write("0123abcd")
    st.write(os.path.join(snap, "model.safetensors"), arrays, metadata={"format": "pt"})
    cfg = json.load(open(os.path.join(base, "config.json")))
    cfg["vocab_size"] = 70000
    json.dump(cfg, open(os.path.join(snap, "config.json"), "w"))
    return home, emb


def qwennet_command_line(tmp):
    """QwenNet's pretrain command (seed README 4.2, CPU form), as it is written."""
    home, emb = hf_cache_with_qwen(tmp)
    os.environ["HF_HOME"] = home
    out = os.path.join(tmp, "qwennet")
    seed_args = ["pretrain", "--dataset_path", os.path.join(tmp, "a.shard"), "--config_path",
                 os.path.join(tmp, "tiny.json"), "--output_model_path", out, "--use_qwen", "--qwen_model_name",
                 "Qwen/Tiny-Qwen", "--world_size", "1", "--gpu_ranks", "--learning_rate", "0", "--weight_decay", "0",
                 "--data_processor", "lm", "--batch_size", "8", "--total_steps", "2", "-q"]
    res = netlm(*seed_args, ok=False)
    ok = res.returncode == 0
    cfg = json.load(open(os.path.join(out, "config.json"))) if ok else {}
    check("QwenNet's pretrain command line: a Qwen2 model from the cached Hugging Face checkpoint",
          ok and cfg.get("model_type") == "qwen2" and cfg.get("vocab_size") == 65541, f"{res.stderr.strip()} {cfg}")
    if ok:
        got = st.read(os.path.join(out, "model.safetensors"))[0]["model.embed_tokens.weight"].to_numpy()
        check("its embedding is the checkpoint's first 65,541 rows (learning rate 0: untouched)",
              np.array_equal(got, emb[:65541]), "rows differ")
    seed_args[seed_args.index(out)] = os.path.join(tmp, "qwennet-bad")
    res = netlm(*[("Qwen/Not-There" if a == "Qwen/Tiny-Qwen" else a) for a in seed_args], ok=False)
    check("a hub id not in the cache: one error line naming it and how to fetch it",
          one_error_line(res, "--qwen_model_name Qwen/Not-There", "huggingface-cli download"), res.stderr)
    res = netlm(*[a for a in seed_args if a not in ("--qwen_model_name", "Qwen/Tiny-Qwen")], ok=False)
    check("--use_qwen with a GPT-2 config: one error line", one_error_line(res, "--use_qwen", "gpt2"), res.stderr)
    del os.environ["HF_HOME"]


def nan_run(tmp):
    """A learning rate that blows the weights up: the first step whose loss is not finite ends the run
    with one error line and a non-zero exit, the checkpoint written before it kept and no model."""
    out = os.path.join(tmp, "nan")
    res = netlm("pretrain", "--dataset_path", os.path.join(tmp, "a.shard"), "--config_path",
                os.path.join(tmp, "tiny.json"), "--output_model_path", out, "--total_steps", "30", "--learning_rate",
                "10", "--warmup", "0", "--weight_decay", "10", "--schedule", "constant", "--batch_size", "2",
                "--seq_length", "8", "--save_checkpoint_steps", "5", "--threads", "2", "-q", ok=False)
    rows = [r.split(",") for r in open(os.path.join(out, "loss.csv")).read().splitlines()[1:]]
    finite = len(rows) < 30 and all(np.isfinite(float(r[1])) for r in rows)
    ckpt = json.load(open(os.path.join(out, "checkpoint", "state.json")))["step"]
    check("a NaN loss: one error line naming the step after the last finite one and the checkpoint kept",
          finite and one_error_line(res, f"step {len(rows) + 1}:", "the loss is", "nan", "learning rate 10",
                                    f"last checkpoint (step {ckpt}) is kept") and ckpt == len(rows) // 5 * 5,
          f"rc {res.returncode}, {len(rows)} rows, checkpoint {ckpt}: {res.stderr}")
    weights = st.read(os.path.join(out, "checkpoint", "model.safetensors"))[0]
    check("... no model written, and the checkpoint's weights are finite",
          not os.path.exists(os.path.join(out, "model.safetensors")) and
          all(np.isfinite(t.to_numpy()).all() for t in weights.values()), os.listdir(out))


def main():
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        netlm("corpus", os.path.join(DATA, "pcaps", "tcpdump-resp_1_benchmark.pcap"), "-o", corpus, "-q")
        lines = open(corpus).read().splitlines(keepends=True)
        # two shards, so windows run across a shard end
        for name, part in (("a", lines[: len(lines) // 3]), ("b", lines[len(lines) // 3:])):
            open(os.path.join(tmp, name + ".txt"), "w").writelines(part)
            netlm("preprocess", "--corpus_path", os.path.join(tmp, name + ".txt"), "--dataset_path",
                  os.path.join(tmp, name + ".shard"), "--seq_length", "32", "-q")
        json.dump({"model_type": "gpt2", "vocab_size": 65541, "n_embd": 64, "n_layer": 1, "n_head": 2,
                   "n_inner": 128, "n_positions": 64}, open(os.path.join(tmp, "tiny.json"), "w"))

        a = os.path.join(tmp, "a")
        res = pretrain(tmp, a, "--world_size", "1", "--gpu_ranks", "0", "--data_processor", "lm", "--embedding",
                       "word", "pos", "--encoder", "transformer", "--mask", "causal", "--target", "lm",
                       "--device", "cpu", "--tie_weights")
        status = re.findall(r"step (\d+)/30 epoch (\d+) loss ([0-9.]+) lr [0-9.e-]+ \d+ tokens/s ETA \d+ s", res.stderr)
        check("a status line every 5 steps", [int(s[0]) for s in status] == [5, 10, 15, 20, 25, 30], res.stderr)
        check("the seed's flags are accepted without a word", all(l.startswith("netlm pretrain: ") and
              "warning" not in l for l in res.stderr.splitlines()), res.stderr)
        if status:
            first, last = float(status[0][2]), float(status[-1][2])
            check("pretraining learns: the loss falls clearly (first report vs last)",
                  last < first - 2.0, f"{first} -> {last}")
            check("the last step runs into epoch 2", status[-1][1] == "2", status[-1])
        rows = open(os.path.join(a, "loss.csv")).read().splitlines()
        check("loss.csv: step,loss,learning_rate, a row per step",
              rows[0] == "step,loss,learning_rate" and [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, 31)),
              rows[:3])
        cfg = json.load(open(os.path.join(a, "config.json")))
        check("config.json: task lm, seq_length 32, built-in vocabulary",
              cfg["netlm"]["task"] == "lm" and cfg["netlm"]["seq_length"] == 32 and
              cfg["netlm"]["tokenizer"]["vocab"] == "builtin", cfg["netlm"])
        state = json.load(open(os.path.join(a, "checkpoint", "state.json")))
        check("checkpoint/state.json: step 30, epoch 1 (0-based), 2 windows into it",
              state["step"] == 30 and state["epoch"] == 1 and state["position"] == 2, state)
        if os.access("/usr/bin/gnuplot", os.X_OK):
            check("loss.png drawn", os.path.getsize(os.path.join(a, "loss.png")) > 1000)
        check("no temporary files left", not [f for d in (a, os.path.join(a, "checkpoint")) for f in os.listdir(d)
                                              if ".tmp" in f or f.endswith(".new")], os.listdir(a))

        prompts = os.path.join(tmp, "prompts.tsv")
        with open(prompts, "w") as f:
            f.write("text_a\n" + "".join(" ".join(l.split()[:12]) + "\n" for l in lines[:4] if l.strip()))
        gen = netlm("generate", "--model", a, "--test_path", prompts, "--threads", "2", ok=False)
        check("netlm generate runs the pretrained model", gen.returncode == 0 and
              len(gen.stdout.splitlines()) == 1 + sum(1 for l in lines[:4] if l.strip()), gen.stderr + gen.stdout)

        b = os.path.join(tmp, "b")
        stopped = pretrain(tmp, b, "-q", "--stop-after", "12")
        check("--stop-after 12 ends the run with a checkpoint and no model",
              "stopped after step 12" in stopped.stderr and not os.path.exists(os.path.join(b, "model.safetensors"))
              and json.load(open(os.path.join(b, "checkpoint", "state.json")))["step"] == 12, stopped.stderr)
        pretrain(tmp, b, "-q", "--resume")
        differ = same_bytes(a, b, ("model.safetensors",), ("config.json",), ("loss.csv",),
                            ("checkpoint", "model.safetensors"), ("checkpoint", "optimizer.safetensors"),
                            ("checkpoint", "state.json"))
        check("stopped + resumed = uninterrupted, bit for bit", not differ, f"{differ} differ")
        interrupted_run(tmp, a)

        # bad inputs: one line naming the culprit, non-zero, nothing written
        c = os.path.join(tmp, "c")
        shard = os.path.join(tmp, "a.shard")
        trunc = os.path.join(tmp, "trunc.shard")
        open(trunc, "wb").write(open(shard, "rb").read()[:100])
        json.dump({"model_type": "gpt2", "vocab_size": 1000, "n_embd": 64, "n_layer": 1, "n_head": 2,
                   "n_positions": 64}, open(os.path.join(tmp, "small.json"), "w"))
        base = ["pretrain", "--config_path", os.path.join(tmp, "tiny.json"), "--output_model_path", c,
                "--total_steps", "2", "--batch_size", "2", "-q"]
        cases = [
            ("a missing shard", ["--dataset_path", os.path.join(tmp, "missing.shard")], ["missing.shard"]),
            ("a truncated shard", ["--dataset_path", trunc], ["trunc.shard", "truncated"]),
            ("a text file as shard", ["--dataset_path", corpus], ["corpus.txt"]),
            ("a shard with more ids than the model", ["--dataset_path", shard, "--config_path",
                                                      os.path.join(tmp, "small.json")], ["a.shard", "65541", "1000"]),
            ("--seq_length beyond the positions", ["--dataset_path", shard, "--seq_length", "64"], ["--seq_length", "64"]),
            # (CI has no GPU: either no CUDA backend or no device, each said in one line)
            ("--device cuda without a GPU", ["--dataset_path", shard, "--device", "cuda"], ["--device", "cuda"]),
            ("--precision without a GPU", ["--dataset_path", shard, "--precision", "fp32"], ["--precision", "cuda"]),
            ("--world_size 2 in one process", ["--dataset_path", shard, "--world_size", "2"], ["--world_size", "mpirun"]),
            ("--resume without a checkpoint", ["--dataset_path", shard, "--resume"], ["checkpoint"]),
            # the same size as the built-in vocabulary the shards were written with, other ids
            ("NetGPT's vocabulary for shards of the built-in one",
             ["--dataset_path", shard, "--vocab_path", os.path.join(DATA, "netgpt", "encryptd_vocab.txt")],
             ["a.shard", "another vocabulary"]),
        ]
        for name, args, words in cases:
            res = netlm(*base, *args, ok=False)
            check(f"{name}: one error line, no output", one_error_line(res, *words) and not os.path.exists(c),
                  f"rc {res.returncode}: {res.stderr.strip()}")
        before = open(os.path.join(b, "checkpoint", "optimizer.safetensors"), "rb").read()
        res = pretrain(tmp, b, "-q", ok=False)
        check("a fresh run onto a checkpoint: one error line", one_error_line(res, "--resume"), res.stderr)
        res = pretrain(tmp, b, "-q", "--resume", "--batch_size", "5", ok=False)
        check("a resume with another --batch_size: one error line, checkpoint kept",
              one_error_line(res, "--batch_size") and
              open(os.path.join(b, "checkpoint", "optimizer.safetensors"), "rb").read() == before, res.stderr)
        res = pretrain(tmp, b, "-q", "--resume", "--learning_rate", "2e-2", "--warmup", "0.2", ok=False)
        check("a resume with another --learning_rate and --warmup: refused, one line naming both, checkpoint kept",
              res.returncode == 2 and one_error_line(res, "--learning_rate 0.01 (now 0.02)", "--warmup 0.1 (now 0.2)")
              and open(os.path.join(b, "checkpoint", "optimizer.safetensors"), "rb").read() == before, res.stderr)
        # a checkpoint of an older netlm records only the data position: its settings are unknown
        old = os.path.join(tmp, "old")
        os.makedirs(old)
        shutil.copytree(os.path.join(b, "checkpoint"), os.path.join(old, "checkpoint"))
        state = json.load(open(os.path.join(old, "checkpoint", "state.json")))
        state["data"] = state["data"].split(" task=")[0]
        json.dump(state, open(os.path.join(old, "checkpoint", "state.json"), "w"))
        res = pretrain(tmp, old, "-q", "--resume", "--learning_rate", "2e-2", ok=False)
        check("an older checkpoint without the settings still resumes", res.returncode == 0 and
              os.path.exists(os.path.join(old, "model.safetensors")), res.stderr)
        nan_run(tmp)
        # data parallel: 2 processes of 4 windows = 1 process of 8 windows, step by step; tiny.json
        # names no dropout, so GPT-2's 0.1 applies and each window's masks must follow it to
        # whichever process reads it
        common = ["pretrain", "--dataset_path", os.path.join(tmp, "a.shard"), os.path.join(tmp, "b.shard"),
                  "--config_path", os.path.join(tmp, "tiny.json"), "--total_steps", "12", "--learning_rate", "1e-2",
                  "--threads", "1", "--seed", "5", "-q"]
        one = os.path.join(tmp, "one")
        netlm(*common, "--output_model_path", one, "--batch_size", "8")
        two = os.path.join(tmp, "two")
        res = mpirun(2, *common, "--output_model_path", two, "--batch_size", "4")
        ok = res.returncode == 0 and os.path.exists(os.path.join(two, "loss.csv"))
        l1 = loss_column(os.path.join(one, "loss.csv"))
        worst = worst_relative(l1, loss_column(os.path.join(two, "loss.csv"))) if ok and len(l1) == 12 else 1.0
        check("mpirun -np 2 (batch 4 each) = one process (batch 8): every step's loss within 1e-5",
              worst <= 1e-5, f"rc {res.returncode}, worst {worst}: {res.stderr.strip()[-400:]}")
        qwennet_command_line(tmp)
    finish()


if __name__ == "__main__":
    main()
