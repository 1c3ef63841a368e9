#!/usr/bin/python3
"""bench_scripts.py — the GPU check's own logic, run where no GPU is, so that a broken script is
found here rather than in a GPU machine's few minutes: bench/gpu_check.sh parses; every
bench/*.py compiles; gpu_summary.py turns a fixture of stage outputs into the table with the
right ratios to PyTorch (cases and variants), the step profile, the GEMM rows (a skipped one
too) and the stages; gpu_fastest_swiglu.py picks the fastest fused-kernel variant, and the
default when none was timed; gpu_e2e.py --only pretrain runs its whole logic on the CPU
(NETLM_E2E_DEVICE=cpu) and reports a step time."""
import glob
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import check, finish  # noqa: E402

SRC = os.environ.get("NETLM_SOURCE_DIR") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
BENCH = os.path.join(SRC, "bench")


def run(*cmd, env=None):
    return subprocess.run(list(cmd), capture_output=True, text=True, env=env, timeout=300)


def write_lines(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(r if isinstance(r, str) else json.dumps(r))
            f.write("\n")


def main():
    r = run("bash", "-n", os.path.join(BENCH, "gpu_check.sh"))
    check("bench/gpu_check.sh parses (bash -n)", r.returncode == 0, r.stderr.strip())
    for path in sorted(glob.glob(os.path.join(BENCH, "*.py"))):
        try:
            compile(open(path).read(), path, "exec")
            ok, why = True, ""
        except SyntaxError as e:
            ok, why = False, str(e)
        check(f"bench/{os.path.basename(path)} compiles", ok, why)

    with tempfile.TemporaryDirectory() as out:
        write_lines(os.path.join(out, "netlm.json"), [
            "== bench-netlm (limit 120s): netlm_model_bench --device cuda",
            {"side": "netlm", "case": "qwen05b-v60005-b256-t256", "ms": 100.0, "seq_per_s": 2560.0, "mfu": 0.49},
            {"side": "netlm", "case": "train-gpt2-base-v60005-b32-t512", "ms": 50.0, "tok_per_s": 327680.0,
             "mfu": 0.25},
            {"side": "netlm", "variant": "attn-head", "case": "qwen05b-v60005-b256-t256", "ms": 80.0,
             "seq_per_s": 3200.0},
            {"side": "netlm", "variant": "profile", "case": "qwen05b-v60005-b256-t256", "ms": 99.0},
            {"variant": "profile", "cuda_profile": {"calls": 5, "ms_per_call": 99.0,
                                                    "steps": {"swiglu": 15.0, "gemm up": 35.0}}},
            {"side": "netlm", "gemm": "qwen-mlp-up+swiglu-fused-c1", "algorithm": "132 CTAs", "ms": 2.56,
             "tflops": 445.8, "max_rel_diff": 0.0039},
            {"side": "netlm", "gemm": "qwen-mlp-up+swiglu-fused-c4", "algorithm": "128 CTAs", "ms": 1.9,
             "tflops": 600.0, "max_rel_diff": 0.0039},
            {"side": "netlm", "gemm": "qwen-mlp-up+swiglu-fused", "skipped": "not a compute capability 9.0 GPU"},
            {"side": "netlm", "gemm_candidate": 0, "m": 9728, "n": 65536, "k": 896, "ms": 1.62, "algo_id": 66,
             "tile_id": 23, "stages_id": 35, "cluster_id": 2},
            {"side": "netlm", "gemm_candidate": 1, "m": 9728, "n": 65536, "k": 896, "ms": 1.47, "algo_id": 66,
             "tile_id": 23, "stages_id": 35, "cluster_id": 3},
        ])
        with open(os.path.join(out, "torch.json"), "w") as f:
            json.dump([{"side": "torch", "torch": "2.11"},
                       {"side": "torch", "case": "qwen05b-v60005-b256-t256", "mode": "eager", "ms": 175.0,
                        "seq_per_s": 1462.9},
                       {"side": "torch", "case": "train-gpt2-base-v60005-b32-t512", "mode": "eager", "ms": 125.0,
                        "tok_per_s": 131072.0}], f)
        with open(os.path.join(out, "gpu_check.json"), "w") as f:
            json.dump([{"stage": "bench-netlm", "status": "ok", "seconds": 9}], f)
        r = run("/usr/bin/python3", os.path.join(BENCH, "gpu_summary.py"), out)
        text = r.stdout
        check("gpu_summary.py runs on a fixture of stage outputs", r.returncode == 0, r.stderr.strip())
        # the main table's row of a case: the first line that starts with its name
        rows = {}
        for line in text.splitlines():
            if line.strip():
                rows.setdefault(line.split()[0], line)
        qwen = rows.get("qwen05b-v60005-b256-t256", "")
        check("summary: a case's ratio to PyTorch eager is PyTorch's time over netlm's (175 / 100)",
              qwen.split()[-2:] == ["1.75", "-"], qwen)
        train = rows.get("train-gpt2-base-v60005-b32-t512", "")
        check("summary: a training case's ratio (125 / 50) and its tokens/s", "2.50" in train.split() and
              "327,680" in train, train)
        check("summary: a variant's ratio to PyTorch eager (175 / 80)",
              "variant attn-head" in text and "x eager 2.19" in text, text)
        check("summary: the step profile, longest step first",
              "99.000 ms = gemm up 35.000, swiglu 15.000" in text, text)
        check("summary: GEMM rows, a skipped one as such",
              "skipped: not a compute capability 9.0 GPU" in text and "445.8" in text, text)
        fastest = [line for line in text.splitlines() if "m 9728 n 65536 k 896" in line][:1]
        check("summary: cuBLASLt's candidates, fastest first with their ids",
              fastest and "#1 1.4700 ms" in fastest[0] and "cluster_id 3" in fastest[0], text)
        check("summary: each stage's status", "bench-netlm" in text and " ok " in text, text)

        r = run("/usr/bin/python3", os.path.join(BENCH, "gpu_fastest_swiglu.py"), os.path.join(out, "netlm.json"))
        check("gpu_fastest_swiglu.py picks the fastest timed variant (c4: 1.9 ms against 2.56)",
              r.stdout.strip() == "c4", r.stdout + r.stderr)
        write_lines(os.path.join(out, "none.json"), ["== bench-gemm", {"side": "netlm", "gemm": "gpt2-up-fwd",
                                                                      "ms": 0.1}])
        r = run("/usr/bin/python3", os.path.join(BENCH, "gpu_fastest_swiglu.py"), os.path.join(out, "none.json"))
        check("gpu_fastest_swiglu.py: the default variant (1) when no fused row was timed",
              r.stdout.strip() == "1", r.stdout + r.stderr)

    env = dict(os.environ, NETLM_E2E_DEVICE="cpu")
    r = run("/usr/bin/python3", os.path.join(BENCH, "gpu_e2e.py"), "--only", "pretrain", os.environ["NETLM"],
            os.path.join(SRC, "models", "ustc-tfc2016"), os.path.join(SRC, "data", "demo.pcap"), env=env)
    report = {}
    try:
        report = json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        pass
    step = report.get("pretrain", {}).get("dry-small", {}).get("ms_per_step", 0)
    check("gpu_e2e.py --only pretrain (on the CPU): the command's steady step from its status lines",
          r.returncode == 0 and report.get("e2e") == "ok" and step > 0, r.stdout[-500:] + r.stderr[-500:])
    finish()


if __name__ == "__main__":
    main()
