#!/usr/bin/python3
"""common.py — what every python integration test shares: the ok/FAIL report lines and their
count, the final tally and exit status, and running netlm (the binary ctest names in $NETLM),
alone or as several processes under mpirun."""
import json
import os
import subprocess
import sys

results = {"passed": 0, "failed": 0}


def check(name, ok, detail=""):
    results["passed" if ok else "failed"] += 1
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f": {detail}"), flush=True)
    return ok


def summary():
    """Prints the tally; the exit status it calls for."""
    print(f"{results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


def finish():
    sys.exit(summary())


def netlm(*args, ok=True):
    """Runs $NETLM with args, output captured; a non-zero exit raises unless ok=False."""
    res = subprocess.run([os.environ["NETLM"], *args], capture_output=True, text=True)
    if ok and res.returncode != 0:
        raise RuntimeError(f"netlm {' '.join(args)} exited {res.returncode}: {res.stderr.strip()}")
    return res


def mpirun(n, *args):
    """Runs n processes of $NETLM with args under mpirun (as root too, more processes than cores
    allowed), output captured."""
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1",
               ASAN_OPTIONS="detect_leaks=0")  # Open MPI's own allocations outlive MPI_Finalize
    return subprocess.run(["mpirun", "-np", str(n), os.environ["NETLM"], *args], capture_output=True, text=True,
                          env=env)


def loss_column(path):
    """The loss of every step row of a training run's loss.csv (dev rows left out)."""
    rows = [line.split(",") for line in open(path).read().splitlines()[1:]]
    return [float(r[1]) for r in rows if r[1]]


def worst_relative(a, b):
    """The largest |x − y| / |x| over two equally long series; 1.0 when their lengths differ."""
    if len(a) != len(b) or not a:
        return 1.0
    return max(abs(x - y) / max(abs(x), 1e-30) for x, y in zip(a, b))


def one_error_line(res, *words):
    """A non-zero exit with exactly one stderr line holding every word."""
    lines = res.stderr.strip().splitlines()
    return res.returncode != 0 and len(lines) == 1 and all(w in lines[0] for w in words)


def hf_qwen_checkpoint(tmp, name, hidden=32):
    """A tiny Qwen2 checkpoint as Hugging Face writes one (config.json without a netlm object,
    model.safetensors), 65,541 tokens; returns its directory."""
    config = os.path.join(tmp, name + ".json")
    json.dump({"model_type": "qwen2", "vocab_size": 65541, "hidden_size": hidden, "intermediate_size": 2 * hidden,
               "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
               "max_position_embeddings": 512, "rope_theta": 1e6, "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
              open(config, "w"))
    out = os.path.join(tmp, name)
    netlm("convert", "--config_path", config, "--to", out)
    cfg = json.load(open(os.path.join(out, "config.json")))
    cfg.pop("netlm")
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"))
    return out
