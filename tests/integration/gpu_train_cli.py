#!/usr/bin/python3
"""gpu_train_cli.py — the training commands on a GPU (--device cuda) against the same commands on
the CPU, on shards and a labelled set made from real captures: pretrain's per-step losses follow
the CPU's within 1e-4 in fp32 (GPT-2 and Qwen2, with and without dropout, whose masks are the
CPU's) and within 2 % in bf16; a GPU run stopped and resumed ends with the same bytes as the
uninterrupted one; --world_size 1 (a one-rank NCCL communicator) changes nothing; finetune
understanding and eval on the GPU report what the CPU reports; finetune generation follows the
CPU and resumes exactly. Exits 77 ("skipped: no GPU")
where no GPU or no CUDA backend is there; bench/gpu_check.sh runs it with ctest -L cuda.

With NETLM_GPU_EMULATED=1 (ctest's integration_emulated_gpu_train_cli, the builds without CUDA)
$NETLM is netlm on the emulated GPU (tests/emulate/) and the runs are shorter, every path still
taken once: the commands' GPU code (the trainer's loop, checkpoints, resume, the evaluation's
engine) checked where no GPU is."""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import check, finish, netlm, one_error_line  # noqa: E402

DATA = os.environ["NETLM_DATA_DIR"]
EMULATED = os.environ.get("NETLM_GPU_EMULATED") == "1"
# pretrain steps and the step a resumed run stops at; samples per class of the two datasets
STEPS, STOP_AT = (8, 3) if EMULATED else (20, 7)
PER_CLASS, GEN_PER_CLASS = (12, 6) if EMULATED else (40, 15)


def losses(out):
    rows = open(os.path.join(out, "loss.csv")).read().splitlines()[1:]
    return [float(r.split(",")[1]) for r in rows if r.split(",")[1]]


def first_apart(a, b, bound):
    """Where two loss curves first part by more than bound: what a failure report needs to tell a
    wrong first step from a slow drift or a break at an epoch's end."""
    for i, (x, y) in enumerate(zip(a, b)):
        if abs(x - y) > bound:
            return f"first at step {i + 1} of {len(a)}: {x:.6f} vs {y:.6f}; steps {i + 1}.. {a[i:i + 4]} vs {b[i:i + 4]}"
    return f"{len(a)} vs {len(b)} steps"


def worst(a, b, relative=False):
    if len(a) != len(b) or not a:
        return float("inf")
    return max(abs(x - y) / (abs(y) if relative else 1.0) for x, y in zip(a, b))


def main():
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        netlm("corpus", os.path.join(DATA, "pcaps", "tcpdump-resp_1_benchmark.pcap"), "-o", corpus, "-q")
        shard = os.path.join(tmp, "a.shard")
        netlm("preprocess", "--corpus_path", corpus, "--dataset_path", shard, "--seq_length", "32", "-q")
        configs = {
            "gpt2": {"model_type": "gpt2", "vocab_size": 65541, "n_embd": 64, "n_layer": 2, "n_head": 2,
                     "n_inner": 128, "n_positions": 64},
            "qwen2": {"model_type": "qwen2", "vocab_size": 65541, "hidden_size": 64, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96,
                      "max_position_embeddings": 64, "rope_theta": 10000.0, "tie_word_embeddings": True},
        }
        for name, cfg in configs.items():
            json.dump(cfg, open(os.path.join(tmp, name + ".json"), "w"))

        def pretrain(out, arch, *extra, ok=True):
            return netlm("pretrain", "--dataset_path", shard, "--config_path", os.path.join(tmp, arch + ".json"),
                         "--output_model_path", os.path.join(tmp, out), "--batch_size", "8", "--total_steps", str(STEPS),
                         "--learning_rate", "3e-3", "--save_checkpoint_steps", "100", "--threads", "2", "--seed", "3",
                         "-q", *extra, ok=ok)

        probe = pretrain("probe", "gpt2", "--device", "cuda", "--total_steps", "1", ok=False)
        if probe.returncode != 0:
            print(f"skipped: no GPU ({probe.stderr.strip()})")
            sys.exit(77)

        # the CUDA tests hold the kernels to the CPU; this holds the commands' loops to it
        for arch in ("gpt2", "qwen2"):
            for drop in ("0", "0.1"):
                pretrain(f"cpu-{arch}-{drop}", arch, "--dropout", drop)
                pretrain(f"gpu-{arch}-{drop}", arch, "--dropout", drop, "--device", "cuda", "--precision", "fp32")
                e = worst(losses(os.path.join(tmp, f"gpu-{arch}-{drop}")), losses(os.path.join(tmp, f"cpu-{arch}-{drop}")))
                check(f"pretrain {arch} --dropout {drop}: {STEPS} fp32 GPU steps follow the CPU within 1e-4 (measured {e:.2e})",
                      e <= 1e-4)
        pretrain("gpu-bf16", "gpt2", "--dropout", "0.1", "--device", "cuda")
        e = worst(losses(os.path.join(tmp, "gpu-bf16")), losses(os.path.join(tmp, "cpu-gpt2-0.1")), relative=True)
        check(f"pretrain gpt2 bf16 on the GPU: every step's loss within 2 % of the CPU's (measured {e:.2e})", e <= 0.02)

        # exact resume on the GPU, and the one-rank communicator
        straight = os.path.join(tmp, "gpu-qwen2-0.1")
        pretrain("resumed", "qwen2", "--dropout", "0.1", "--device", "cuda", "--precision", "fp32", "--stop-after", str(STOP_AT))
        pretrain("resumed", "qwen2", "--dropout", "0.1", "--device", "cuda", "--precision", "fp32", "--resume")
        resumed = os.path.join(tmp, "resumed")
        differ = [f for f in ("model.safetensors", "loss.csv", os.path.join("checkpoint", "optimizer.safetensors"))
                  if open(os.path.join(straight, f), "rb").read() != open(os.path.join(resumed, f), "rb").read()]
        check(f"a GPU run stopped after {STOP_AT} steps and resumed = the uninterrupted one, bit for bit", not differ,
              f"{differ} differ")
        res = pretrain("world1", "gpt2", "--dropout", "0.1", "--device", "cuda", "--world_size", "1", "--gpu_ranks", "0",
                       ok=False)
        if "NCCL no" in netlm("--version").stdout:
            check("--world_size 1 --gpu_ranks 0 in a build without NCCL: one error line saying so, nothing written",
                  one_error_line(res, "NCCL") and not os.path.exists(os.path.join(tmp, "world1")), res.stderr)
        else:
            check("--world_size 1 --gpu_ranks 0 (NCCL, one rank) trains exactly as without it",
                  res.returncode == 0 and losses(os.path.join(tmp, "world1")) == losses(os.path.join(tmp, "gpu-bf16")),
                  res.stderr.strip())
        res = pretrain("bad", "gpt2", "--device", "cuda:99", ok=False)
        check("--device cuda:99: one error line naming it, nothing written",
              one_error_line(res, "cuda:99") and not os.path.exists(os.path.join(tmp, "bad")), res.stderr)

        # finetune understanding and eval
        ds = os.path.join(tmp, "ds")
        netlm("dataset", "understanding", "--pcap_path", os.path.join(DATA, "labeled", "ustc-tfc2016", "sessions"),
              "--dataset_dir", ds, "--class_num", "20", "--random_seed", "1", "--samples-per-class", str(PER_CLASS),
              "--seq-length", "64", "-q")

        def finetune(out, *extra):
            return netlm("finetune", "understanding", "--config_path", os.path.join(tmp, "gpt2.json"),
                         "--train_path", f"{ds}/train_dataset.tsv", "--dev_path", f"{ds}/valid_dataset.tsv",
                         "--test_path", f"{ds}/test_dataset.tsv", "--output_model_path", os.path.join(tmp, out),
                         "--epochs_num", "2", "--batch_size", "16", "--learning_rate", "1e-3", "--seq_length", "64",
                         "--threads", "2", "--seed", "3", "-q", *extra)

        # At --learning_rate 3e-3 this run is chaotic: rounding differences of 1e-6 grow threefold a
        # step, and the CPU with --threads 1 parts from itself with --threads 2 by 0.1 within 80
        # steps. A step-by-step comparison needs a stable run: at 1e-3 the CPU's two thread counts
        # agree to 1e-6 over all 80 steps, which this control keeps checking.
        finetune("ft-cpu-t1", "--dropout", "0.1", "--threads", "1")

        for drop in ("0", "0.1"):
            finetune(f"ft-cpu-{drop}", "--dropout", drop)
            finetune(f"ft-gpu-{drop}", "--dropout", drop, "--device", "cuda", "--precision", "fp32")
            lg, lc = losses(os.path.join(tmp, f"ft-gpu-{drop}")), losses(os.path.join(tmp, f"ft-cpu-{drop}"))
            e = worst(lg, lc)
            check(f"finetune on the GPU (fp32, dropout {drop}): every step's loss within 1e-4 of the CPU's "
                  f"(measured {e:.2e})", e <= 1e-4, first_apart(lg, lc, 1e-4))
        e = worst(losses(os.path.join(tmp, "ft-cpu-t1")), losses(os.path.join(tmp, "ft-cpu-0.1")))
        check(f"control: that finetune run is stable (the CPU with 1 and 2 threads within 1e-5; measured {e:.2e})",
              e <= 1e-5)
        mc = json.load(open(os.path.join(tmp, "ft-cpu-0.1", "metrics.json")))
        mg = json.load(open(os.path.join(tmp, "ft-gpu-0.1", "metrics.json")))
        # weights 1e-6 apart may flip a row on a class border: allow 1 % of the rows
        check("finetune on the GPU: the CPU's test accuracy within 1 %", abs(mc["accuracy"] - mg["accuracy"]) <= 0.01,
              f"{mc['accuracy']} vs {mg['accuracy']}")
        ev = [netlm("eval", "--model", os.path.join(tmp, "ft-gpu-0.1"), "--test_path", f"{ds}/test_dataset.tsv", *extra)
              for extra in ((), ("--device", "cuda", "--precision", "fp32"), ("--device", "cuda"))]
        acc = [float(r.stderr.split("accuracy ")[1].split(",")[0]) for r in ev]
        check("eval of one model: fp32 on the GPU gives the CPU's accuracy exactly, bf16 within 2 %",
              acc[1] == acc[0] and abs(acc[2] - acc[0]) <= 0.02, acc)

        # finetune generation: training on the GPU, dev and test generated with its KV cache
        gds = os.path.join(tmp, "gen-ds")
        netlm("dataset", "generation", "--pcap_path", os.path.join(DATA, "labeled", "ustc-tfc2016", "sessions"),
              "--dataset_dir", gds, "--random_seed", "1", "--samples-per-class", str(GEN_PER_CLASS), "-q")
        json.dump({"model_type": "gpt2", "vocab_size": 65541, "n_embd": 32, "n_layer": 1, "n_head": 2,
                   "n_inner": 64, "n_positions": 48}, open(os.path.join(tmp, "gen.json"), "w"))
        def generation(out, *extra):
            return netlm("finetune", "generation", "--config_path", os.path.join(tmp, "gen.json"),
                         "--train_path", f"{gds}/train_dataset.tsv", "--dev_path", f"{gds}/valid_dataset.tsv",
                         "--test_path", f"{gds}/test_dataset.tsv", "--output_model_path", os.path.join(tmp, out),
                         "--seq_length", "40", "--epochs_num", "2", "--batch_size", "16", "--learning_rate", "3e-3",
                         "--threads", "2", "-q", *extra)

        for where in (("--device", "cpu"), ("--device", "cuda", "--precision", "fp32")):
            generation("g-" + where[1], *where)
        generation("g-cuda-resumed", "--device", "cuda", "--precision", "fp32", "--stop-after", "1")
        generation("g-cuda-resumed", "--device", "cuda", "--precision", "fp32", "--resume")
        same = all(open(os.path.join(tmp, "g-cuda", f), "rb").read() ==
                   open(os.path.join(tmp, "g-cuda-resumed", f), "rb").read()
                   for f in ("model.safetensors", os.path.join("checkpoint", "optimizer.safetensors")))
        check("finetune generation on the GPU stopped after epoch 1 and resumed = uninterrupted, bit for bit", same)
        e = worst(losses(os.path.join(tmp, "g-cuda")), losses(os.path.join(tmp, "g-cpu")))
        gc = json.load(open(os.path.join(tmp, "g-cpu", "metrics.json")))
        gg = json.load(open(os.path.join(tmp, "g-cuda", "metrics.json")))
        check(f"finetune generation on the GPU (fp32): losses within 1e-4 of the CPU's (measured {e:.2e}), "
              f"test exact match within 1 % ({gg['exact_match']} vs {gc['exact_match']})",
              e <= 1e-4 and abs(gg["exact_match"] - gc["exact_match"]) <= 0.01)

    finish()


if __name__ == "__main__":
    main()
