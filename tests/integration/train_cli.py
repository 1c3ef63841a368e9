#!/usr/bin/python3
"""train_cli.py — netlm finetune understanding and eval end to end on real labelled traffic (a
small USTC-TFC2016 sample, a tiny model): it must learn (test accuracy far above chance), write
its reports consistently with the model it keeps (eval of the saved model gives the metrics
finetune reported; prf.csv and confusion.tsv agree with metrics.json), and a run stopped after
one epoch and resumed must end with the same bytes as the uninterrupted run. Both finetune tasks
data parallel: 2 processes under mpirun with half the batch each train as one process does with
the whole batch, step by step, and score dev and test as eval and generate score their model.
A resume with other training rows or settings is refused; the tokenization a dataset recorded
(dataset.json) reaches the model's config; generation checks its targets and takes the seed's
README command line."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (check, finish, hf_qwen_checkpoint, loss_column, mpirun, netlm,  # noqa: E402
                    one_error_line, worst_relative)

DATA = os.environ["NETLM_DATA_DIR"]
NETLM = os.environ["NETLM"]


def understanding_args(tmp, out, *extra):
    ds = os.path.join(tmp, "ds")
    return ["finetune", "understanding", "--config_path", os.path.join(tmp, "tiny.json"),
            "--train_path", f"{ds}/train_dataset.tsv", "--dev_path", f"{ds}/valid_dataset.tsv",
            "--test_path", f"{ds}/test_dataset.tsv", "--output_model_path", out, "--epochs_num", "4",
            "--batch_size", "16", "--learning_rate", "3e-3", "--seq_length", "64", "--threads", "2",
            "--seed", "3", "-q", *extra]


def finetune(tmp, out, *extra, ok=True):
    return netlm(*understanding_args(tmp, out, *extra), ok=ok)


def interrupted_run(tmp, uninterrupted):
    """SIGTERM (systemctl stop, a batch scheduler's time limit) during the second epoch: the step
    under way ends with a checkpoint of it, the exit status is a terminated run's, and --resume
    goes on mid-epoch to end where the uninterrupted run ended, bit for bit."""
    out = os.path.join(tmp, "term")
    run = subprocess.Popen([NETLM, *understanding_args(tmp, out)], stderr=subprocess.PIPE, text=True)
    state_path = os.path.join(out, "checkpoint", "state.json")
    deadline = time.time() + 600
    while not os.path.exists(state_path) and run.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    run.send_signal(signal.SIGTERM)  # the first epoch's checkpoint is there: three to go
    err = run.communicate()[1]
    state = json.load(open(state_path))
    steps = [l for l in open(os.path.join(out, "loss.csv")).read().splitlines()[1:] if l.split(",")[3] == "-1"]
    want = (f"netlm finetune understanding: interrupted (Terminated) at step {state['step']} of epoch {state['epoch'] + 1}: "
            "checkpoint written; --resume continues")
    check("finetune, SIGTERM: the step under way ends with a checkpoint of it, exit status 143, one line",
          run.returncode == 128 + signal.SIGTERM and err.strip() == want and len(steps) == state["step"]
          and not os.path.exists(os.path.join(out, "metrics.json")), f"rc {run.returncode}, {state}: {err}")
    res = finetune(tmp, out, "--resume")
    differ = [os.path.join(*p) for p in (("model.safetensors",), ("checkpoint", "model.safetensors"),
                                         ("checkpoint", "optimizer.safetensors"), ("prf.csv",), ("confusion.tsv",),
                                         ("loss.csv",))
              if open(os.path.join(uninterrupted, *p), "rb").read() != open(os.path.join(out, *p), "rb").read()]
    check("finetune interrupted + resumed (mid-epoch) = uninterrupted, bit for bit", not differ,
          f"{differ} differ: {res.stderr}")


def drop_seconds(out, name):
    """metrics.json without its train_seconds, which no two runs share."""
    m = json.load(open(os.path.join(out, name)))
    m.pop("train_seconds", None)
    return m


def own_vocabulary(tmp):
    """A pretrained model with its own vocabulary file (NetGPT's) passes it on: both finetune tasks
    tokenize with it and write it next to the model they keep; a resume finds it in the checkpoint."""
    vocab = os.path.join(DATA, "netgpt", "encryptd_vocab.txt")
    pre = os.path.join(tmp, "pre-vocab")
    netlm("convert", "--config_path", os.path.join(tmp, "tiny.json"), "--to", pre, "--vocab_path", vocab)
    want = open(vocab, "rb").read()
    out = os.path.join(tmp, "ft-vocab")
    ds = os.path.join(tmp, "ds")
    args = ["finetune", "understanding", "--pretrained_model_path", pre, "--train_path", f"{ds}/train_dataset.tsv",
            "--dev_path", f"{ds}/valid_dataset.tsv", "--test_path", f"{ds}/test_dataset.tsv", "--output_model_path",
            out, "--epochs_num", "2", "--seq_length", "64", "--threads", "2", "-q"]
    netlm(*args, "--stop-after", "1")
    check("a checkpoint of a model with its own vocabulary holds it",
          open(os.path.join(out, "checkpoint", "vocab.txt"), "rb").read() == want)
    # the resume is given no --pretrained_model_path: the vocabulary must come from the checkpoint
    netlm(*[a for a in args if a != pre and a != "--pretrained_model_path"], "--resume")
    cfg = json.load(open(os.path.join(out, "config.json")))
    check("finetune understanding of a model with its own vocabulary: OUT/vocab.txt is that vocabulary",
          open(os.path.join(out, "vocab.txt"), "rb").read() == want and cfg["netlm"]["tokenizer"]["vocab"] == "vocab.txt",
          cfg["netlm"]["tokenizer"])
    ev = netlm("eval", "--model", out, "--test_path", f"{ds}/test_dataset.tsv", ok=False)
    check("eval runs the model finetune kept", ev.returncode == 0, ev.stderr)

    # --vocab_path naming the vocabulary the model was made with is the seed's habit, and fine;
    # another one of the same size (NetGPT's for a built-in model) would scramble every id
    rest = ["--train_path", f"{ds}/train_dataset.tsv", "--dev_path", f"{ds}/valid_dataset.tsv", "--test_path",
            f"{ds}/test_dataset.tsv", "--epochs_num", "1", "--seq_length", "64", "--threads", "2", "-q"]
    res = netlm("finetune", "understanding", "--pretrained_model_path", pre, "--vocab_path", vocab, *rest,
                "--output_model_path", os.path.join(tmp, "ft-vocab-same"), ok=False)
    check("--vocab_path the model's own vocabulary: accepted", res.returncode == 0, res.stderr.strip())
    builtin_pre = os.path.join(tmp, "pre-builtin")
    netlm("convert", "--config_path", os.path.join(tmp, "tiny.json"), "--to", builtin_pre)
    other = os.path.join(tmp, "ft-vocab-other")
    res = netlm("finetune", "understanding", "--pretrained_model_path", builtin_pre, "--vocab_path", vocab, *rest,
                "--output_model_path", other, ok=False)
    check("--vocab_path NetGPT's for a built-in model: one error line, no output",
          one_error_line(res, "--vocab_path", "encryptd_vocab.txt", "built-in") and not os.path.exists(other),
          f"rc {res.returncode}: {res.stderr.strip()}")


def seed_qwen(tmp):
    """QwenNet's finetune flags: --use_qwen demands a Qwen2 model, --qwen_model_name (without
    --pretrained_model_path) starts from that Hugging Face checkpoint."""
    bad = finetune(tmp, os.path.join(tmp, "q-bad"), "--use_qwen", ok=False)
    check("finetune --use_qwen with a GPT-2 config: one error line, no output directory",
          one_error_line(bad, "--use_qwen", "gpt2") and not os.path.exists(os.path.join(tmp, "q-bad")), bad.stderr)
    hf = hf_qwen_checkpoint(tmp, "hf-qwen")
    out = os.path.join(tmp, "q")
    args = understanding_args(tmp, out, "--use_qwen", "--qwen_model_name", hf, "--epochs_num", "1")
    res = netlm(*[a for a in args if a not in ("--config_path", os.path.join(tmp, "tiny.json"))], ok=False)
    got = json.load(open(os.path.join(out, "config.json"))) if res.returncode == 0 else {}
    check("finetune --use_qwen --qwen_model_name DIR: a Qwen2 classifier from that checkpoint",
          got.get("model_type") == "qwen2" and got.get("netlm", {}).get("task") == "classify", res.stderr)


def data_parallel_understanding(tmp):
    """960 training rows in global batches of 34: the last step of each epoch has 8 rows, all in
    the first process's slice, so the second trains on nothing there and must add a zero
    gradient. Dropout (GPT-2's default 0.1) numbers its masks by the row's place in the epoch,
    whichever process reads it."""
    one, two = os.path.join(tmp, "dp1"), os.path.join(tmp, "dp2")
    netlm(*understanding_args(tmp, one, "--epochs_num", "2", "--batch_size", "34", "--threads", "1"))
    res = mpirun(2, *understanding_args(tmp, two, "--epochs_num", "2", "--batch_size", "17", "--threads", "1"))
    ok = res.returncode == 0 and os.path.exists(os.path.join(two, "metrics.json"))
    l1 = loss_column(os.path.join(one, "loss.csv"))
    worst = worst_relative(l1, loss_column(os.path.join(two, "loss.csv"))) if ok else 1.0
    check("finetune understanding, mpirun -np 2 (batch 17 each) = one process (batch 34): every step's loss "
          "within 1e-5", ok and len(l1) == 2 * 29 and worst <= 1e-5,
          f"rc {res.returncode}, {len(l1)} steps, worst {worst}: {res.stderr.strip()[-400:]}")
    if not ok:
        return
    m = json.load(open(os.path.join(two, "metrics.json")))
    ev = netlm("eval", "--model", two, "--test_path", os.path.join(tmp, "ds", "test_dataset.tsv"))
    check("the 2 processes' test metrics (each classifies half the rows) are eval's of their model",
          m["rows"] == 120 and f"accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}" in ev.stderr,
          f"{m} vs {ev.stderr.strip()}")
    # a checkpoint of 2 × 17 resumes in one process of 34, and not of 17
    three = os.path.join(tmp, "dp3")
    res = mpirun(2, *understanding_args(tmp, three, "--epochs_num", "2", "--batch_size", "17", "--threads", "1",
                                        "--stop-after", "1"))
    state = json.load(open(os.path.join(three, "checkpoint", "state.json")))
    check("the checkpoint records 34 sequences per step", res.returncode == 0 and state.get("global_batch") == 34,
          f"rc {res.returncode}, {state}: {res.stderr.strip()[-300:]}")
    bad = finetune(tmp, three, "--epochs_num", "2", "--batch_size", "17", "--threads", "1", "--resume", ok=False)
    check("resuming it with 17 sequences per step: one error line naming --batch_size",
          one_error_line(bad, "--batch_size", "34", "17"), bad.stderr)
    res = finetune(tmp, three, "--epochs_num", "2", "--batch_size", "34", "--threads", "1", "--resume", ok=False)
    l3 = loss_column(os.path.join(three, "loss.csv"))
    check("resumed in one process of 34: it finishes, each step's loss within 1e-5 of the one-process run",
          res.returncode == 0 and worst_relative(l1, l3) <= 1e-5, f"rc {res.returncode}: {res.stderr.strip()}")
    bad = finetune(tmp, os.path.join(tmp, "dp4"), "--world_size", "2", ok=False)
    check("--world_size 2 in one process: one error line naming mpirun", one_error_line(bad, "--world_size", "mpirun"),
          bad.stderr)


def refused(res, *words):
    """A refused resume: exit status 2 and one error line holding every word."""
    return res.returncode == 2 and one_error_line(res, *words)


def recorded_tokenization(tmp):
    """netlm dataset records how it tokenized (dataset.json, in a --dataset_dir whose parents it
    creates); finetune puts that into the model's config, which classify and the sensor read."""
    pcaps = os.path.join(tmp, "three-classes")
    os.makedirs(pcaps, exist_ok=True)
    for c in ("BitTorrent", "Cridex", "FTP"):
        if not os.path.exists(os.path.join(pcaps, c)):
            os.symlink(os.path.join(DATA, "labeled", "ustc-tfc2016", "sessions", c), os.path.join(pcaps, c))
    ds = os.path.join(tmp, "data", "understanding", "datasets")
    made = netlm("dataset", "understanding", "--pcap_path", pcaps, "--dataset_dir", ds + "/", "--header-mode", "seed",
                 "--stride", "1", "--packets", "5", "--samples-per-class", "30", "--seq-length", "64", "-q", ok=False)
    settings = json.load(open(os.path.join(ds, "dataset.json"))) if made.returncode == 0 else {}
    want = {"header_mode": "seed", "stride": 1, "tokens_per_packet": 64, "packets": 5, "sep_between_packets": False}
    check("dataset --dataset_dir with missing parents: created, and dataset.json records the tokenization",
          settings.get("task") == "understanding" and settings.get("tokenizer") == want, made.stderr + str(settings))
    if made.returncode != 0:
        return
    out = os.path.join(tmp, "tok")
    args = ["finetune", "understanding", "--config_path", os.path.join(tmp, "tiny.json"),
            "--train_path", f"{ds}/train_dataset.tsv", "--dev_path", f"{ds}/valid_dataset.tsv",
            "--test_path", f"{ds}/test_dataset.tsv", "--output_model_path", out, "--epochs_num", "1",
            "--seq_length", "64", "--threads", "2", "-q"]
    res = netlm(*args, ok=False)
    tok = json.load(open(os.path.join(out, "config.json")))["netlm"]["tokenizer"] if res.returncode == 0 else {}
    check("finetune understanding: the model's config.json has the dataset's tokenization",
          {k: tok.get(k) for k in want} == want, res.stderr + str(tok))
    other = os.path.join(tmp, "ds")  # made with the defaults: header mode full, stride 2
    bad = netlm(*[f"{other}/valid_dataset.tsv" if a == f"{ds}/valid_dataset.tsv" else a for a in args], ok=False)
    check("a --dev_path whose dataset.json says another tokenization: one error line naming both files",
          one_error_line(bad, "dataset.json", "header_mode", "--dev_path"), bad.stderr)


def seed_generation(tmp, gds):
    """The seed README's generation command (§2.2) as it is written, --pooling included."""
    out = os.path.join(tmp, "g-seed")
    res = netlm("finetune", "generation", "--pretrained_model_path", os.path.join(tmp, "hf-qwen"),
                "--output_model_path", out, "--vocab_path", os.path.join(DATA, "netgpt", "encryptd_vocab.txt"),
                "--config_path", os.path.join(tmp, "gen.json"), "--use_qwen", "--qwen_model_name", "Qwen/Qwen2.5-0.5B",
                "--train_path", f"{gds}/train_dataset.tsv", "--dev_path", f"{gds}/valid_dataset.tsv",
                "--test_path", f"{gds}/test_dataset.tsv", "--learning_rate", "1e-5", "--epochs_num", "1",
                "--batch_size", "16", "--pooling", "mean", "--seq_length", "40", "--tgt_seq_length", "4",
                "--threads", "2", "-q", ok=False)
    check("the seed README's finetune generation command (--pooling mean ...) trains",
          res.returncode == 0 and os.path.exists(os.path.join(out, "metrics.json")), res.stderr)
    help_text = netlm("finetune", "generation", "--help").stdout
    check("finetune generation --help: --pooling has no effect, --vocab_path defaults to the model's",
          "does not pool" in help_text and "vocabulary (default: the model's" in help_text, help_text)


def generation_targets(tmp, gen_args):
    """finetune generation refuses targets that are not its fields': an understanding dataset (with
    or without its dataset.json), or a two-field dataset read as one field; with its dataset.json
    the two fields are taken from it."""
    ds = os.path.join(tmp, "ds")
    bad = netlm(*gen_args(ds, os.path.join(tmp, "g-u1")), ok=False)
    check("finetune generation on an understanding dataset: one error line naming its dataset.json",
          one_error_line(bad, "dataset.json", "understanding") and not os.path.exists(os.path.join(tmp, "g-u1")),
          bad.stderr)
    bare = os.path.join(tmp, "bare-understanding")
    os.makedirs(bare, exist_ok=True)
    for split in ("train", "valid", "test"):
        shutil.copy(os.path.join(ds, f"{split}_dataset.tsv"), bare)
    bad = netlm(*gen_args(bare, os.path.join(tmp, "g-u2")), ok=False)
    check("finetune generation on understanding TSVs (class ids as labels): one error line naming the row",
          one_error_line(bad, "train_dataset.tsv:2", "not a generation target"), bad.stderr)
    two = os.path.join(tmp, "gen-two")
    netlm("dataset", "generation", "--pcap_path", os.path.join(DATA, "labeled", "ustc-tfc2016", "sessions"),
          "--dataset_dir", two, "--fields", "ip_len,src_port", "--samples-per-class", "5", "-q")
    out = os.path.join(tmp, "g-two")
    res = netlm(*gen_args(two, out, "--seq_length", "36"), ok=False)
    got = json.load(open(os.path.join(out, "metrics.json"))) if res.returncode == 0 else {}
    check("finetune generation takes the dataset's fields (ip_len,src_port) from its dataset.json",
          sorted(got.get("jsd", {})) == ["ip_len", "src_port"], res.stderr + str(got))
    bad = netlm(*gen_args(two, os.path.join(tmp, "g-two-b"), "--fields", "ip_len"), ok=False)
    check("--fields ip_len for a dataset of ip_len,src_port: one error line", one_error_line(bad, "--fields", "src_port"),
          bad.stderr)
    if os.path.exists(os.path.join(two, "dataset.json")):
        os.remove(os.path.join(two, "dataset.json"))
    bad = netlm(*gen_args(two, os.path.join(tmp, "g-two-c")), ok=False)
    check("without dataset.json, 4-token targets under the default --fields ip_len: one error line",
          one_error_line(bad, "4 tokens", "--fields ip_len"), bad.stderr)


def uer_qwen_config(tmp):
    """A UER config with use_qwen builds Qwen2.5-0.5B's shape, the checkpoint QwenNet loads; one that
    names another Qwen checkpoint is refused rather than built with sizes it does not state."""
    cfg = os.path.join(tmp, "qwen-7b-uer.json")
    json.dump({"use_qwen": True, "qwen_model_name": "Qwen/Qwen2.5-7B", "emb_size": 64, "hidden_size": 64,
               "feedforward_size": 128, "heads_num": 2, "layers_num": 2}, open(cfg, "w"))
    bad = netlm("convert", "--config_path", cfg, "--to", os.path.join(tmp, "q7"), ok=False)
    check("convert of a UER use_qwen config naming Qwen2.5-7B: one error line, nothing written",
          one_error_line(bad, "qwen_model_name", "Qwen2.5-7B") and not os.path.exists(os.path.join(tmp, "q7")),
          bad.stderr)


def from_a_classifier(tmp):
    """Finetuning a pretrained classifier with as many labels keeps its head and its pooling, but the
    names are the dataset's (classes.txt, which prf.csv reports too), said in one warning; names
    with a quote, comma and tab keep metrics.json, prf.csv and confusion.tsv well-formed."""
    ds, ds2 = os.path.join(tmp, "ds"), os.path.join(tmp, "ds-renamed")
    shutil.copytree(ds, ds2)
    old_names = open(os.path.join(ds, "classes.txt")).read().split("\n")[:20]
    new_names = [f'{n} "x",\ty' if i % 2 else f"renamed-{n}" for i, n in enumerate(old_names)]
    open(os.path.join(ds2, "classes.txt"), "w").write("\n".join(new_names) + "\n")
    pre = os.path.join(tmp, "pre-first")
    finetune(tmp, pre, "--pooling", "first", "--epochs_num", "1")

    def again(out, *extra):
        return netlm("finetune", "understanding", "--pretrained_model_path", pre, "--train_path",
                     f"{ds2}/train_dataset.tsv", "--dev_path", f"{ds2}/valid_dataset.tsv", "--test_path",
                     f"{ds2}/test_dataset.tsv", "--output_model_path", out, "--epochs_num", "1", "--seq_length", "64",
                     "--batch_size", "16", "--threads", "2", "-q", *extra, ok=False)

    out = os.path.join(tmp, "renamed")
    res = again(out)
    cfg = json.load(open(os.path.join(out, "config.json"))) if res.returncode == 0 else {"netlm": {}}
    check("a kept head: config.json takes classes.txt's names and the pretrained pooling, one warning",
          cfg["netlm"].get("labels") == new_names and cfg["netlm"].get("pooling") == "first" and
          sum("warning" in l for l in res.stderr.splitlines()) == 1 and "head is kept" in res.stderr and
          "renamed-" in res.stderr, f"{res.stderr} {cfg['netlm']}")
    if res.returncode == 0:
        metrics = json.load(open(os.path.join(out, "metrics.json")))
        with open(os.path.join(out, "prf.csv"), newline="") as f:
            prf = list(csv.DictReader(f))
        with open(os.path.join(out, "confusion.tsv")) as f:
            cm = [line.rstrip("\n").split("\t") for line in f]
        head = [c.replace("\\t", "\t") for c in cm[0][1:]]
        check("label names with quotes, commas and tabs: metrics.json parses, prf.csv and confusion.tsv keep "
              "their columns", [c["label"] for c in metrics["per_class"]] == new_names and
              [r["label"] for r in prf] == new_names and all(len(r) == 21 for r in cm) and head == new_names,
              f"{cm[0][:3]} {prf[:2]}")
    res = again(os.path.join(tmp, "repooled"), "--pooling", "mean")
    check("--pooling other than the kept head's: a warning naming both",
          res.returncode == 0 and "--pooling mean" in res.stderr and "--pooling first" in res.stderr, res.stderr)
    res = again(os.path.join(tmp, "zero"), "--labels_num", "0")
    check("--labels_num 0: refused with one error line", res.returncode == 2 and one_error_line(res, "--labels"),
          res.stderr)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        ds = os.path.join(tmp, "ds")
        netlm("dataset", "understanding", "--pcap_path", os.path.join(DATA, "labeled", "ustc-tfc2016", "sessions"),
              "--dataset_dir", ds, "--class_num", "20", "--random_seed", "1", "--samples-per-class", "60",
              "--seq-length", "64", "-q")
        json.dump({"model_type": "gpt2", "vocab_size": 65541, "n_embd": 64, "n_layer": 1, "n_head": 2,
                   "n_inner": 128, "n_positions": 64}, open(os.path.join(tmp, "tiny.json"), "w"))
        a = os.path.join(tmp, "a")
        res = finetune(tmp, a)
        # tiny.json names no dropout, so GPT-2's 0.1 applies: the resume check below covers the
        # dropout masks too
        cfg = json.load(open(os.path.join(a, "config.json")))
        check("a GPT-2 config without dropout keys trains with 0.1 and says so in config.json",
              all(abs(cfg[k] - 0.1) < 1e-6 for k in ("embd_pdrop", "attn_pdrop", "resid_pdrop")), cfg)
        nodrop = finetune(tmp, os.path.join(tmp, "a0"), "--dropout", "0", "--epochs_num", "1")
        once = finetune(tmp, os.path.join(tmp, "a1"), "--epochs_num", "1")
        check("--dropout 0 trains another model than the default 0.1",
              open(os.path.join(tmp, "a0", "model.safetensors"), "rb").read()
              != open(os.path.join(tmp, "a1", "model.safetensors"), "rb").read(), nodrop.stderr + once.stderr)
        m = json.load(open(os.path.join(a, "metrics.json")))
        check("finetune learns: test accuracy well above chance (0.05)", m["accuracy"] > 0.4, m["accuracy"])
        check("finetune reports test accuracy and macro-F1 on stderr",
              f"test accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}" in res.stderr, res.stderr)
        with open(os.path.join(a, "prf.csv")) as f:
            rows = list(csv.DictReader(f))
        names = open(os.path.join(ds, "classes.txt")).read().split("\n")[:20]
        check("prf.csv: one row per class, named from classes.txt",
              len(rows) == 20 and [r["label"] for r in rows] == names, rows[:2])
        support = sum(int(r["support"]) for r in rows)
        with open(os.path.join(a, "confusion.tsv")) as f:
            cm = [line.rstrip("\n").split("\t") for line in f][1:]
        diag = sum(int(r[i + 1]) for i, r in enumerate(cm))
        total = sum(int(x) for r in cm for x in r[1:])
        check("confusion.tsv agrees with metrics.json", total == m["rows"] == support
              and abs(diag / total - m["accuracy"]) < 1e-6, f"{diag}/{total} vs {m}")
        ev = netlm("eval", "--model", a, "--test_path", os.path.join(ds, "test_dataset.tsv"))
        check("eval of the saved model gives finetune's test metrics",
              f"accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}" in ev.stderr, ev.stderr)
        lines = open(os.path.join(a, "loss.csv")).read().splitlines()
        dev_rows = [l for l in lines[1:] if l.split(",")[3] != "-1"]
        check("loss.csv: a row per step and a dev row per epoch", len(dev_rows) == 4 and len(lines) > 20, lines[:3])
        b = os.path.join(tmp, "b")
        stopped = finetune(tmp, b, "--stop-after", "1")
        check("--stop-after 1 ends the run with a checkpoint", "stopped after epoch 1" in stopped.stderr
              and not os.path.exists(os.path.join(b, "metrics.json")), stopped.stderr)
        for change, words in ((("--learning_rate", "6e-3"), ("--learning_rate", "0.003", "0.006")),
                              (("--epochs_num", "5"), ("--epochs_num", "4", "5")),
                              (("--train_path", os.path.join(ds, "valid_dataset.tsv")), ("training rows",))):
            bad = finetune(tmp, b, "--resume", *change, ok=False)
            check(f"resume with {' '.join(change[:1])} changed: refused, exit 2, one line naming it",
                  refused(bad, *words), f"rc {bad.returncode}: {bad.stderr}")
        finetune(tmp, b, "--resume")
        differ = [os.path.join(*p) for p in (("model.safetensors",), ("checkpoint", "model.safetensors"),
                                             ("checkpoint", "optimizer.safetensors"), ("prf.csv",), ("confusion.tsv",))
                  if open(os.path.join(a, *p), "rb").read() != open(os.path.join(b, *p), "rb").read()]
        check("stopped + resumed = uninterrupted, bit for bit", not differ, f"{differ} differ")
        interrupted_run(tmp, a)
        bad = netlm("finetune", "understanding", "--config_path", os.path.join(tmp, "tiny.json"),
                                "--train_path", os.path.join(tmp, "missing.tsv"), "--dev_path", "x", "--test_path", "y",
                                "--output_model_path", os.path.join(tmp, "c"), "--seq_length", "64", ok=False)
        check("finetune with a missing TSV: one error line, no output directory", bad.returncode != 0 and
              len(bad.stderr.strip().splitlines()) == 1 and "missing.tsv" in bad.stderr
              and not os.path.exists(os.path.join(tmp, "c")), bad.stderr)
        from_a_classifier(tmp)
        seed_qwen(tmp)
        data_parallel_understanding(tmp)
        own_vocabulary(tmp)
        # generation: the seed's IPv4 total-length task, decoder-only
        gds = os.path.join(tmp, "gen-ds")
        netlm("dataset", "generation", "--pcap_path", os.path.join(DATA, "labeled", "ustc-tfc2016", "sessions"),
              "--dataset_dir", gds, "--random_seed", "1", "--samples-per-class", "15", "-q")
        json.dump({"model_type": "gpt2", "vocab_size": 65541, "n_embd": 32, "n_layer": 1, "n_head": 2,
                   "n_inner": 64, "n_positions": 48}, open(os.path.join(tmp, "gen.json"), "w"))
        g = os.path.join(tmp, "g")

        def generation(out, batch, processes=1, extra=()):
            args = ["finetune", "generation", "--config_path", os.path.join(tmp, "gen.json"),
                    "--train_path", f"{gds}/train_dataset.tsv", "--dev_path", f"{gds}/valid_dataset.tsv",
                    "--test_path", f"{gds}/test_dataset.tsv", "--output_model_path", out, "--seq_length", "40",
                    "--epochs_num", "4", "--batch_size", str(batch), "--learning_rate", "1e-2", "--threads", "1", "-q",
                    *extra]
            return netlm(*args, ok=False) if processes == 1 else mpirun(processes, *args)

        res = generation(g, 8)
        check("finetune generation runs", res.returncode == 0, res.stderr)
        gm = json.load(open(os.path.join(g, "metrics.json")))
        check("finetune generation learns: test exact match and the ip_len JSD in metrics.json",
              0.1 <= gm["exact_match"] <= 1.0 and 0.0 <= gm["jsd"]["ip_len"] < 1.0 and gm["rows"] > 0, gm)
        gen = netlm("generate", "--model", g, "--test_path", f"{gds}/test_dataset.tsv", "-q")
        check("generate with the saved model gives finetune's test exact match",
              f"exact-match accuracy {gm['exact_match']:.4f}" in gen.stderr, f"{gen.stderr.strip()} vs {gm}")
        gs = os.path.join(tmp, "gs")
        stopped = generation(gs, 8, extra=("--stop-after", "2"))
        check("finetune generation --stop-after 2 ends the run with a checkpoint",
              "stopped after epoch 2" in stopped.stderr and not os.path.exists(os.path.join(gs, "metrics.json"))
              and json.load(open(os.path.join(gs, "checkpoint", "state.json")))["epoch"] == 2, stopped.stderr)
        bad = generation(gs, 8, extra=("--resume", "--epochs_num", "6"))
        check("finetune generation: resume with --epochs_num changed: refused, exit 2, one line naming it",
              refused(bad, "--epochs_num", "4", "6"), f"rc {bad.returncode}: {bad.stderr}")
        generation(gs, 8, extra=("--resume",))
        differ = [p for p in ("model.safetensors", "metrics.json", "loss.csv")
                  if open(os.path.join(g, p), "rb").read() != open(os.path.join(gs, p), "rb").read()
                  and not (p == "metrics.json" and drop_seconds(g, p) == drop_seconds(gs, p))]
        check("finetune generation stopped + resumed = uninterrupted (model, metrics, loss.csv)", not differ,
              f"{differ} differ")
        g2 = os.path.join(tmp, "g2")
        res = generation(g2, 4, processes=2)
        ok = res.returncode == 0 and os.path.exists(os.path.join(g2, "metrics.json"))
        worst = worst_relative(loss_column(os.path.join(g, "loss.csv")), loss_column(os.path.join(g2, "loss.csv")))
        check("finetune generation, mpirun -np 2 (batch 4 each) = one process (batch 8): every step's loss "
              "within 1e-5 (the loss weighted by each slice's target tokens)", ok and worst <= 1e-5,
              f"rc {res.returncode}, worst {worst}: {res.stderr.strip()[-400:]}")
        if ok:
            gm2 = json.load(open(os.path.join(g2, "metrics.json")))
            gen = netlm("generate", "--model", g2, "--test_path", f"{gds}/test_dataset.tsv", "-q")
            check("the 2 processes' test exact match (each generates half the rows) is generate's of their model",
                  gm2["rows"] == gm["rows"] and f"exact-match accuracy {gm2['exact_match']:.4f}" in gen.stderr,
                  f"{gen.stderr.strip()} vs {gm2}")
        gv = os.path.join(tmp, "gv")
        netlm("finetune", "generation", "--pretrained_model_path", os.path.join(tmp, "pre-vocab"),
              "--train_path", f"{gds}/train_dataset.tsv", "--dev_path", f"{gds}/valid_dataset.tsv",
              "--test_path", f"{gds}/test_dataset.tsv", "--output_model_path", gv, "--seq_length", "40",
              "--epochs_num", "1", "--threads", "2", "-q")
        cfg = json.load(open(os.path.join(gv, "config.json")))
        check("finetune generation of a model with its own vocabulary: OUT/vocab.txt is that vocabulary",
              open(os.path.join(gv, "vocab.txt"), "rb").read() ==
              open(os.path.join(DATA, "netgpt", "encryptd_vocab.txt"), "rb").read()
              and cfg["netlm"]["tokenizer"]["vocab"] == "vocab.txt", cfg["netlm"]["tokenizer"])
        seed_generation(tmp, gds)

        def gen_args(dataset, out, *extra):
            return ["finetune", "generation", "--config_path", os.path.join(tmp, "gen.json"),
                    "--train_path", f"{dataset}/train_dataset.tsv", "--dev_path", f"{dataset}/valid_dataset.tsv",
                    "--test_path", f"{dataset}/test_dataset.tsv", "--output_model_path", out, "--seq_length", "40",
                    "--epochs_num", "1", "--threads", "2", "-q", *extra]
        generation_targets(tmp, gen_args)
        recorded_tokenization(tmp)
        uer_qwen_config(tmp)
        help_text = netlm("finetune", "understanding", "--help").stdout
        check("finetune understanding --help: no alias equal to --seed; --report_steps says 'at least every 30 s'",
              "(alias --seed)" not in help_text and "at least every 30 s" in help_text, help_text)
    finish()


if __name__ == "__main__":
    main()
