#!/usr/bin/python3
"""train_parallel_bench.py — CPU training data parallel under mpirun against one process with
the same cores as threads, in the same run, on the same data and global batch.

Builds the USTC-TFC2016 understanding set (--samples-per-class per class, 128-token rows) and
finetunes the bundled small GPT-2 (config/models/gpt2-small-traffic.json) for --epochs epochs:
  - one process, --threads P, --batch_size B;
  - mpirun -np P, --threads 1 each, --batch_size B / P (the same B sequences per step).
Both runs take the same steps (the data-parallel test checks their losses agree to 1e-5; this
prints the largest difference seen), so the ratio of their training seconds (metrics.json's
train_seconds: the epochs with dev scoring, without start-up and test) is the speed of one way
of using P cores against the other. Prints one JSON object.

Across machines the processes sum their gradients over the network. --tcp makes Open MPI use TCP
over the loopback interface instead of shared memory, and --link-gbit R (root; implies --tcp)
also limits the loopback to R Gbit/s with a token-bucket qdisc (tc) while mpirun runs, removed
after: a stand-in for a cluster link, where what each step sends is what matters.

usage: train_parallel_bench.py BUILD_DIR DATA_DIR [--processes P] [--batch B] [--samples-per-class N] [--epochs E]
                               [--tcp] [--link-gbit R]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def run(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr[-600:]}")
    return p


def losses(out):
    rows = [line.split(",") for line in open(os.path.join(out, "loss.csv")).read().splitlines()[1:]]
    return [float(r[1]) for r in rows if r[1]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("data")
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--samples-per-class", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--tcp", action="store_true")
    ap.add_argument("--link-gbit", type=float)
    a = ap.parse_args()
    if a.batch % a.processes:
        sys.exit(f"--batch {a.batch} does not split into {a.processes} processes")
    netlm = os.path.join(a.build, "netlm")
    mpi_env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   OMPI_MCA_rmaps_base_oversubscribe="1")
    if a.tcp or a.link_gbit:
        mpi_env.update(OMPI_MCA_btl="tcp,self", OMPI_MCA_btl_tcp_if_include="lo")
    with tempfile.TemporaryDirectory() as tmp:
        ds = os.path.join(tmp, "ds")
        run([netlm, "dataset", "understanding", "--pcap_path", os.path.join(a.data, "labeled", "ustc-tfc2016", "sessions"),
             "--dataset_dir", ds, "--class_num", "20", "--random_seed", "1",
             "--samples-per-class", str(a.samples_per_class), "-q"])
        common = ["finetune", "understanding", "--config_path",
                  os.path.join(SRC, "config", "models", "gpt2-small-traffic.json"),
                  "--train_path", f"{ds}/train_dataset.tsv", "--dev_path", f"{ds}/valid_dataset.tsv",
                  "--test_path", f"{ds}/test_dataset.tsv", "--epochs_num", str(a.epochs), "--learning_rate", "1e-4",
                  "--seed", "1", "-q"]
        one, many = os.path.join(tmp, "one"), os.path.join(tmp, "many")
        run([netlm, *common, "--output_model_path", one, "--threads", str(a.processes), "--batch_size", str(a.batch)])
        if a.link_gbit:
            run(["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", f"{a.link_gbit}gbit", "burst", "256kb",
                 "latency", "50ms"])
        try:
            run(["mpirun", "-np", str(a.processes), netlm, *common, "--output_model_path", many, "--threads", "1",
                 "--batch_size", str(a.batch // a.processes)], env=mpi_env)
        finally:
            if a.link_gbit:
                run(["tc", "qdisc", "del", "dev", "lo", "root"])
        m1 = json.load(open(os.path.join(one, "metrics.json")))
        mp = json.load(open(os.path.join(many, "metrics.json")))
        l1, lp = losses(one), losses(many)
        rows = sum(1 for _ in open(f"{ds}/train_dataset.tsv")) - 1
    worst = max(abs(x - y) / abs(x) for x, y in zip(l1, lp)) if len(l1) == len(lp) and l1 else None
    print(json.dumps({
        "train_rows": rows, "epochs": a.epochs, "steps": len(l1), "sequences_per_step": a.batch,
        "one_process": {"threads": a.processes, "train_seconds": m1["train_seconds"],
                        "test_accuracy": m1["accuracy"]},
        "mpirun": {"processes": a.processes, "threads_each": 1, "train_seconds": mp["train_seconds"],
                   "test_accuracy": mp["accuracy"],
                   "transport": f"tcp over lo at {a.link_gbit} Gbit/s" if a.link_gbit else "tcp over lo" if a.tcp
                   else "Open MPI's default (shared memory)"},
        "speedup_mpirun_vs_threads": round(m1["train_seconds"] / mp["train_seconds"], 3) if mp["train_seconds"] else None,
        "worst_step_loss_relative_difference": worst,
    }, indent=1))


if __name__ == "__main__":
    main()
