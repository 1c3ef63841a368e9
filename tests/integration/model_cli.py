#!/usr/bin/python3
"""model_cli.py — netlm classify, generate and convert end to end, against the PyTorch twin's
fixtures (tests/reference/twin.py): a TSV whose rows are the twin's inputs must come back with
the twin's class scores and greedy continuations; accuracy and exact match on stderr must count
what the labels say; captures are classified session by session; a converted checkpoint keeps
(or, with --resize init, replaces) its embedding rows; bad input is one error line, a non-zero
exit and no output file, found before the model is loaded and before anything reaches stdout;
the seed's inference command (run_classifier_infer.py's flags) writes the seed's prediction file;
generate refuses a classifier; TSV content a model would misread is warned about; the confusion
plot's class names are whole; --version reports the build and the GPUs that --device cuda finds."""
import struct
import zlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.environ.get("NETLM_SOURCE_DIR", os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(SOURCE, "tests", "reference"))
import st  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import check, finish, netlm, one_error_line  # noqa: E402

DATA = os.environ["NETLM_DATA_DIR"]


def fixture(case_dir):
    tensors, _ = st.read(os.path.join(case_dir, "fixtures.safetensors"))
    return {k: v.to_numpy() for k, v in tensors.items()}


def rows_text(ids, lengths):
    """The TSV text of each fixture row: its ids between [CLS] and [SEP] as 4-hex tokens (the
    built-in vocabulary maps value v to id 5 + v)."""
    out = []
    for row, n in zip(ids, lengths):
        inner = row[1:n - 1]
        assert row[0] == 2 and row[n - 1] == 1 and all(i >= 5 for i in inner)
        out.append(" ".join(f"{int(i) - 5:04x}" for i in inner))
    return out


def token_text(i):
    return f"{int(i) - 5:04x}" if i >= 5 else ["[PAD]", "[SEP]", "[CLS]", "[UNK]", "[MASK]"][i]


def lm_copy(model, dest):
    """The twin's model as a language model (task lm, no labels, no classifier head; its
    sequence lengths kept): generate refuses a classifier, whose LM head was never trained."""
    if not os.path.exists(dest):
        shutil.copytree(model, dest)
        cfg = json.load(open(os.path.join(dest, "config.json")))
        cfg["netlm"]["task"] = "lm"
        cfg["netlm"].pop("labels", None)
        cfg["netlm"].pop("num_labels", None)
        json.dump(cfg, open(os.path.join(dest, "config.json"), "w"))
        tensors, _ = st.read(os.path.join(dest, "model.safetensors"))
        st.write(os.path.join(dest, "model.safetensors"),
                 {k: v.to_numpy() for k, v in tensors.items() if not k.startswith("classifier.")})
    return dest


def test_classify_tsv(twin, tmp):
    fx = fixture(os.path.join(twin, "gpt2"))
    model = os.path.join(twin, "gpt2", "model")
    texts = rows_text(fx["input_ids"], fx["lengths"])
    want = fx["scores_mean"]
    truth = [int(np.argmax(s)) for s in want]
    labels = list(truth)
    labels[-1] = (labels[-1] + 1) % 5  # one wrong label: accuracy 3/4
    tsv = os.path.join(tmp, "test.tsv")
    with open(tsv, "w", newline="") as f:
        f.write("label\ttext_a\r\n")
        for lab, text in zip(labels, texts):
            f.write(f"{lab}\t{text}\r\n")
    out = os.path.join(tmp, "pred.tsv")
    res = netlm("classify", "--model", model, "--test_path", tsv, "--output", out, "--top-k", "5", "-q")
    lines = open(out).read().splitlines()
    check("classify: header and one line per row", lines[0] == "row\tlabel_id\tlabel\tscore\ttop_k" and len(lines) == 5,
          repr(lines[:2]))
    worst = 0.0
    for line, w in zip(lines[1:], want):
        row, label_id, label, score, topk = line.split("\t")
        scores = {name: float(v) for name, v in (p.split(":") for p in topk.split(","))}
        got = np.array([scores[f"c{k}"] for k in range(5)])
        worst = max(worst, float(np.max(np.abs(got - w))))
        if int(label_id) != int(np.argmax(w)) or label != f"c{label_id}":
            worst = 1.0
    check("classify: the twin's class scores and argmax", worst <= 2e-6, f"max |diff| {worst}")
    check("classify: accuracy 3/4 and macro-F1 on stderr", "accuracy 0.7500" in res.stderr and "macro-F1" in res.stderr,
          res.stderr.strip())
    # label names work as labels too; JSON lines parse and carry the same result
    with open(tsv, "w") as f:
        f.write("label\ttext_a\n")
        for t, text in zip(truth, texts):
            f.write(f"c{t}\t{text}\n")
    res = netlm("classify", "--model", model, "--test_path", tsv, "--format", "json", "-q")
    objs = [json.loads(l) for l in res.stdout.splitlines()]
    check("classify: JSON lines, label names as labels", len(objs) == 4 and all(o["label_id"] == t for o, t in zip(objs, truth))
          and "accuracy 1.0000" in res.stderr and all(len(o["top_k"]) == 3 for o in objs), res.stderr.strip())


def test_generate(twin, tmp):
    for case in ("gpt2", "qwen2"):
        fx = fixture(os.path.join(twin, case))
        model = lm_copy(os.path.join(twin, case, "model"), os.path.join(tmp, f"lm-{case}"))
        texts = rows_text(fx["input_ids"], fx["lengths"])
        greedy, glen = fx["greedy"], fx["greedy_len"]
        targets = []
        for row, n in zip(greedy, glen):
            toks = [int(t) for t in row[:n]]
            if 1 in toks:
                toks = toks[:toks.index(1)]
            targets.append(" ".join(token_text(t) for t in toks))
        tsv = os.path.join(tmp, f"gen-{case}.tsv")
        with open(tsv, "w") as f:
            f.write("label\ttext_a\n")
            for tgt, text in zip(targets, texts):
                f.write(f"{tgt}\t{text}\n")
        max_new = greedy.shape[1]
        res = netlm("generate", "--model", model, "--test_path", tsv, "--tgt_seq_length", str(max_new + 1), "-q")
        lines = res.stdout.splitlines()[1:]
        got = [l.split("\t")[1] for l in lines]
        check(f"generate {case}: the twin's greedy continuations", got == targets, f"{got} vs {targets}")
        # a row whose continuation is [SEP] at once has an empty target, which means "no target"
        n = sum(1 for t in targets if t)
        check(f"generate {case}: exact match {n}/{n} on stderr", n > 0 and f"exact-match accuracy 1.0000 ({n}/{n})" in res.stderr,
              res.stderr.strip())
        res = netlm("generate", "--model", model, "--test_path", tsv, "--temperature", "1.5", "--top-k", "40",
                    "--seed", "3", "--tgt_seq_length", "6", "--format", "json", "-q")
        a = [json.loads(l)["generated"] for l in res.stdout.splitlines()]
        res2 = netlm("generate", "--model", model, "--test_path", tsv, "--temperature", "1.5", "--top-k", "40",
                     "--seed", "3", "--tgt_seq_length", "6", "--format", "json", "-q")
        b = [json.loads(l)["generated"] for l in res2.stdout.splitlines()]
        check(f"generate {case}: sampling is reproducible with a seed", a == b and len(a) == 4, f"{a} vs {b}")


def test_classify_captures(twin, tmp):
    model = os.path.join(twin, "gpt2", "model")
    demo = os.path.join(SOURCE, "data", "demo.pcap")
    res = netlm("classify", "--model", model, demo, "-q")
    lines = res.stdout.splitlines()
    sessions = netlm("sessions", demo, "-q").stdout.splitlines()
    n_sessions = sum(1 for l in sessions if l and not l.startswith("#") and not l.startswith("file\t")
                     and not l.startswith("id\t"))
    check("classify captures: one row per session", len(lines) - 1 == n_sessions and n_sessions > 0,
          f"{len(lines) - 1} rows, {n_sessions} sessions")
    cols = lines[0].split("\t")
    check("classify captures: flow columns then the result", cols[:3] == ["file", "first_frame", "proto"]
          and cols[-4:] == ["label_id", "label", "score", "top_k"], cols)


def test_convert(twin, tmp):
    src = os.path.join(twin, "qwen2", "model")
    fx = fixture(os.path.join(twin, "qwen2"))
    texts = rows_text(fx["input_ids"], fx["lengths"])
    tsv = os.path.join(tmp, "conv.tsv")
    with open(tsv, "w") as f:
        f.write("text_a\n" + "".join(t + "\n" for t in texts))
    base = netlm("classify", "--model", src, "--test_path", tsv, "-q").stdout
    # a Hugging Face style checkpoint with a larger vocabulary: the twin's weights, embedding
    # grown to 70,000 rows (the extra rows random) and no netlm object
    big = os.path.join(tmp, "hf-big")
    os.makedirs(big)
    tensors, _ = st.read(os.path.join(src, "model.safetensors"))
    arrays = {k: v.to_numpy() for k, v in tensors.items()}
    emb = arrays["model.embed_tokens.weight"]
    rng = np.random.default_rng(1)
    arrays["model.embed_tokens.weight"] = np.concatenate(
        [emb, rng.normal(0, 0.02, (70000 - emb.shape[0], emb.shape[1])).astype(np.float32)])
    st.write(os.path.join(big, "model.safetensors"), arrays, metadata={"format": "pt"})
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["vocab_size"] = 70000
    netlm_obj = cfg.pop("netlm")
    json.dump(cfg, open(os.path.join(big, "config.json"), "w"))
    out = os.path.join(tmp, "converted")
    res = netlm("convert", "--from", big, "--to", out)
    conv_cfg = json.load(open(os.path.join(out, "config.json")))
    check("convert: vocab 70000 -> 65541, first rows kept", conv_cfg["vocab_size"] == 65541 and "first rows kept" in res.stderr,
          res.stderr.strip())
    conv, _ = st.read(os.path.join(out, "model.safetensors"))
    check("convert: embedding = the checkpoint's first 65541 rows",
          np.array_equal(conv["model.embed_tokens.weight"].to_numpy(), emb), "rows differ")
    # restore the classifier so the converted backbone can be compared through classify
    conv_arrays = {k: v.to_numpy() for k, v in conv.items()}
    for k, v in arrays.items():
        if k.startswith("classifier."):
            conv_arrays[k] = v
    st.write(os.path.join(out, "model.safetensors"), conv_arrays, metadata={"format": "pt"})
    conv_cfg["netlm"] = dict(conv_cfg.get("netlm", {}), task="classify", labels=netlm_obj["labels"],
                             seq_length=netlm_obj["seq_length"])
    json.dump(conv_cfg, open(os.path.join(out, "config.json"), "w"))
    again = netlm("classify", "--model", out, "--test_path", tsv, "-q").stdout
    check("convert: the converted model classifies as the original", again == base, "outputs differ")
    out2 = os.path.join(tmp, "converted-init")
    res = netlm("convert", "--from", big, "--to", out2, "--resize", "init", "--seed", "5")
    conv2, _ = st.read(os.path.join(out2, "model.safetensors"))
    e2 = conv2["model.embed_tokens.weight"].to_numpy()
    check("convert --resize init: fresh N(0, 0.02) rows", e2.shape == emb.shape and not np.array_equal(e2, emb)
          and abs(float(e2.std()) - 0.02) < 0.002, f"std {e2.std()}")
    vocab = os.path.join(DATA, "netgpt", "encryptd_vocab.txt")
    out3 = os.path.join(tmp, "converted-vocab")
    netlm("convert", "--from", src, "--to", out3, "--vocab_path", vocab)
    cfg3 = json.load(open(os.path.join(out3, "config.json")))
    check("convert --vocab FILE: vocab.txt copied and named in config.json",
          cfg3["netlm"]["tokenizer"]["vocab"] == "vocab.txt"
          and open(os.path.join(out3, "vocab.txt"), "rb").read() == open(vocab, "rb").read(), cfg3["netlm"])
    # the seed's UER config makes a fresh GPT-2 with UER LayerNorm
    out4 = os.path.join(tmp, "from-uer")
    small = os.path.join(tmp, "uer-small.json")
    uer = json.load(open(os.path.join(DATA, "netgpt", "gpt2-config.json")))
    uer.update(emb_size=64, hidden_size=64, feedforward_size=128, heads_num=4, layers_num=2, max_seq_length=128)
    json.dump(uer, open(small, "w"))
    netlm("convert", "--config_path", small, "--to", out4)
    cfg4 = json.load(open(os.path.join(out4, "config.json")))
    check("convert --config_path (UER form): GPT-2 with UER LayerNorm",
          cfg4["model_type"] == "gpt2" and cfg4["n_layer"] == 2 and cfg4["netlm"]["layer_norm"] == "uer", cfg4)


def test_seed_names(twin, tmp):
    """The seed's own checkpoints, saved as safetensors: NetGPT's UER names for GPT-2 (nn.Linear
    [out, in] weights, q/k/v as three linears, LayerNorm gamma/beta, the tied output layer again,
    run_understanding.py's output_layer_1/2 head) and QwenNet's "qwen_model." before Qwen2's names load as the same model: classify gives the
    bytes it gives for the Hugging Face named original."""
    for arch in ("gpt2", "qwen2"):
        src = os.path.join(twin, arch, "model")
        fx = fixture(os.path.join(twin, arch))
        tsv = os.path.join(tmp, f"seed-{arch}.tsv")
        with open(tsv, "w") as f:
            f.write("text_a\n" + "".join(t + "\n" for t in rows_text(fx["input_ids"], fx["lengths"])))
        base = netlm("classify", "--model", src, "--test_path", tsv, "-q").stdout
        tensors, _ = st.read(os.path.join(src, "model.safetensors"))
        hf = {k: v.to_numpy() for k, v in tensors.items()}
        out = {}
        for k, v in hf.items():
            if k.startswith("classifier.") and arch == "gpt2":  # run_understanding.py's head
                out[k.replace("classifier.dense", "output_layer_1").replace("classifier.out_proj", "output_layer_2")] = v
            elif k.startswith("classifier."):
                out[k] = v
            elif arch == "qwen2":
                out["qwen_model." + k] = v
            else:
                name = k[len("transformer."):] if k.startswith("transformer.") else k
                parts = name.split(".")
                if name == "wte.weight":
                    out["embedding.word.embedding.weight"] = v
                    out["target.lm.output_layer.weight"] = v  # tied: saved again, not read
                elif name == "wpe.weight":
                    out["embedding.pos.embedding.weight"] = v
                elif parts[0] == "ln_f":
                    out["encoder.layer_norm." + {"weight": "gamma", "bias": "beta"}[parts[1]]] = v
                else:
                    layer, rest = f"encoder.transformer.{parts[1]}.", ".".join(parts[2:])
                    ln = {"ln_1.weight": "layer_norm_1.gamma", "ln_1.bias": "layer_norm_1.beta",
                          "ln_2.weight": "layer_norm_2.gamma", "ln_2.bias": "layer_norm_2.beta"}
                    linear = {"attn.c_proj": "self_attn.final_linear", "mlp.c_fc": "feed_forward.linear_1",
                              "mlp.c_proj": "feed_forward.linear_2"}
                    if rest in ln:
                        out[layer + ln[rest]] = v
                    elif rest.startswith("attn.c_attn."):
                        for j, piece in enumerate(np.split(v, 3, axis=-1)):
                            out[layer + f"self_attn.linear_layers.{j}.{parts[-1]}"] = np.ascontiguousarray(
                                piece.T if piece.ndim == 2 else piece)
                    else:
                        base_name = rest.rsplit(".", 1)[0]
                        out[layer + linear[base_name] + "." + parts[-1]] = np.ascontiguousarray(v.T if v.ndim == 2 else v)
        d = os.path.join(tmp, f"seed-names-{arch}")
        os.makedirs(d)
        shutil.copy(os.path.join(src, "config.json"), d)
        st.write(os.path.join(d, "model.safetensors"), out, metadata={"format": "pt"})
        res = netlm("classify", "--model", d, "--test_path", tsv, "-q", ok=False)
        check(f"{'UER' if arch == 'gpt2' else 'QwenNet'}-named {arch} weights classify as the Hugging Face named "
              f"original", res.returncode == 0 and res.stdout == base, res.stderr.strip()[-300:])


def test_bad_input(twin, tmp):
    model = os.path.join(twin, "gpt2", "model")
    good = os.path.join(tmp, "good.tsv")
    with open(good, "w") as f:
        f.write("label\ttext_a\n0\t0a0b 0c0d\n")
    cases = {
        "no header": "0\t0a0b\n",
        "wrong column count": "label\ttext_a\n0\t0a0b\textra\n",
        "unknown label": "label\ttext_a\nnot-a-label\t0a0b\n",
        "binary data": "label\ttext_a\n0\t0a\x000b\n",
        "more columns than read": "label\ttext_a" + "\tx" * 70 + "\n0\t0a0b" + "\ty" * 70 + "\n",
        "row with 70 columns": "label\ttext_a\n0\t0a0b" + "\ty" * 68 + "\n",
    }
    for name, content in cases.items():
        path = os.path.join(tmp, "bad.tsv")
        with open(path, "w") as f:
            f.write(content)
        out = os.path.join(tmp, "bad-out.tsv")
        res = netlm("classify", "--model", model, "--test_path", path, "--output", out, "-q", ok=False)
        err = res.stderr.strip().splitlines()
        check(f"classify bad TSV ({name}): one error line naming the file, no output",
              res.returncode != 0 and len(err) == 1 and "bad.tsv" in err[0] and not os.path.exists(out), res.stderr)
    for args, needle in (
        (["classify", "--test_path", good], "--model"),
        (["classify", "--model", os.path.join(tmp, "nope"), "--test_path", good], "nope"),
        (["classify", "--model", model, "--test_path", os.path.join(tmp, "missing.tsv")], "missing.tsv"),
        (["classify", "--model", model, "--test_path", good, "--format", "xml"], "--format"),
        (["generate", "--model", lm_copy(model, os.path.join(tmp, "lm-gpt2")), "--test_path", good,
          "--tgt_seq_length", "100"], "positions"),
        (["classify", "--model", model, "--test_path", good, "--residual", "fp32"], "--residual"),
        (["classify", "--model", model, "--test_path", good, "--device", "cuda", "--residual", "fp16"], "--residual"),
        (["generate", "--model", model, "--test_path", good, "--device", "cuda", "--precision", "fp32",
          "--residual", "bf16"], "--residual"),
        (["eval", "--model", model, "--test_path", good, "--residual", "bf16"], "--residual"),
        (["convert", "--from", os.path.join(tmp, "nope"), "--to", os.path.join(tmp, "x")], "nope"),
        (["convert", "--to", os.path.join(tmp, "x")], "--from"),
    ):
        res = netlm(*args, ok=False)
        err = res.stderr.strip().splitlines()
        check(f"bad usage {' '.join(a for a in args if a.startswith('--'))}: one error line",
              res.returncode != 0 and len(err) == 1 and needle in err[0], res.stderr)
    # an empty header field is a column as it is in the rows (csv.reader's reading)
    path = os.path.join(tmp, "empty-column.tsv")
    with open(path, "w") as f:
        f.write("label\t\ttext_a\n0\tnote\t0a0b 0c0d\n")
    res = netlm("classify", "--model", model, "--test_path", path, "-q", ok=False)
    check("classify: an empty header column is a column (3 fields a row read)",
          res.returncode == 0 and len(res.stdout.strip().splitlines()) == 2, res.stderr)
    # a classify model is required for classify
    lm = lm_copy(model, os.path.join(tmp, "lm-gpt2"))
    res = netlm("classify", "--model", lm, "--test_path", good, ok=False)
    check("classify on a language model: a clear error", res.returncode != 0 and "not a classification model" in res.stderr,
          res.stderr)


def test_seed_inference(twin, tmp):
    """run_classifier_infer.py's command line, as the seed's users type it: its flags accepted
    (the ones that restate the model checked against it), the seed's prediction file written
    (a 'label' header, [logits], [prob]; one row per input with its label id), nothing on
    stdout."""
    fx = fixture(os.path.join(twin, "gpt2"))
    model = os.path.join(twin, "gpt2", "model")
    want = fx["scores_mean"]
    tsv = os.path.join(tmp, "nolabel_test_dataset.tsv")
    with open(tsv, "w", newline="") as f:  # the seed's nolabel file: a text_a column only
        f.write("text_a\r\n" + "".join(t + "\r\n" for t in rows_text(fx["input_ids"], fx["lengths"])))
    seq = str(json.load(open(os.path.join(model, "config.json")))["netlm"]["seq_length"])
    pred = os.path.join(tmp, "prediction.tsv")
    seed_args = ["--load_model_path", model, "--test_path", tsv, "--prediction_path", pred, "--labels_num", "5",
                 "--config_path", os.path.join(model, "config.json"), "--pooling", "mean", "--seq_length", seq,
                 "--batch_size", "3"]
    res = netlm("classify", *seed_args, "--output_logits", "--output_prob", ok=False)
    lines = open(pred).read().splitlines() if os.path.exists(pred) else []
    check("seed inference: accepted, nothing on stdout, the seed's header",
          res.returncode == 0 and res.stdout == "" and lines[:1] == ["label\tlogits\tprob"], res.stderr.strip())
    rows = [l.split("\t") for l in lines[1:]]
    ids_ok = len(rows) == 4 and all(len(r) == 3 and r[0] == str(int(np.argmax(w))) for r, w in zip(rows, want))
    worst = 1.0
    if ids_ok:
        prob = np.array([[float(v) for v in r[2].split(" ")] for r in rows])
        logits = np.array([[float(v) for v in r[1].split(" ")] for r in rows])
        soft = np.exp(logits - logits.max(axis=1, keepdims=True))
        soft /= soft.sum(axis=1, keepdims=True)
        worst = max(float(np.max(np.abs(prob - want))), float(np.max(np.abs(soft - want))))
    check("seed inference: label ids, the twin's probabilities, logits whose softmax they are",
          ids_ok and worst <= 2e-6, f"{lines[:2]} worst {worst}")
    netlm("classify", *seed_args)
    lines = open(pred).read().splitlines()
    check("seed inference: without --output_logits/--output_prob, 'label' and the ids only",
          lines[0] == "label" and [l for l in lines[1:]] == [str(int(np.argmax(w))) for w in want], lines)
    res = netlm("classify", *seed_args[:4], "--prediction_path", pred, "--format", "tsv", "-q")
    check("seed inference: --format tsv keeps netlm's columns (label names) at --prediction_path",
          open(pred).read().splitlines()[0] == "row\tlabel_id\tlabel\tscore\ttop_k", res.stderr.strip())
    # a flag that disagrees with the model: the seed would have built another model; refused
    other = os.path.join(tmp, "other-config.json")
    cfg = json.load(open(os.path.join(model, "config.json")))
    cfg["n_layer"] = cfg["n_layer"] + 1
    json.dump(cfg, open(other, "w"))
    os.remove(pred)
    for extra, needle in ((["--labels_num", "17"], "--labels_num"), (["--config_path", other], "--config_path"),
                          (["--pooling", "first"], "--pooling")):
        res = netlm("classify", *seed_args, *extra, ok=False)
        check(f"seed inference: {' '.join(extra[:1])} against the model: one error line, exit 2, no file",
              one_error_line(res, needle) and res.returncode == 2 and not os.path.exists(pred), res.stderr)
    res = netlm("classify", "--model", model, "--test_path", tsv, "--output_logits", ok=False)
    check("--output_logits outside the seed's format: a usage error",
          one_error_line(res, "--output_logits") and res.returncode == 2 and res.stdout == "", res.stderr)
    # NetGPT's encryptd_vocab.txt has the built-in vocabulary's size and other ids: a model trained
    # with the built-in one (the bundled model) would read every token as another, without a sound
    bundled = os.path.join(SOURCE, "models", "ustc-tfc2016")
    netgpt_vocab = os.path.join(DATA, "netgpt", "encryptd_vocab.txt")
    for command in ("classify", "eval", "generate"):
        res = netlm(command, "--model", bundled, "--vocab_path", netgpt_vocab, "--test_path", tsv, ok=False)
        check(f"{command} --vocab_path another vocabulary of the model's size: one error line naming it, exit 2",
              one_error_line(res, "--vocab_path", "encryptd_vocab.txt", "built-in") and res.returncode == 2
              and res.stdout == "", res.stderr)


def test_checks_before_work(twin, tmp):
    """Inputs and outputs are checked before the model is loaded: their error comes first (here
    the model is missing too) and nothing reaches stdout."""
    model = os.path.join(twin, "gpt2", "model")
    good = os.path.join(tmp, "early.tsv")
    with open(good, "w") as f:
        f.write("label\ttext_a\n0\t0a0b 0c0d\n")
    folder = os.path.join(tmp, "an-existing-folder")
    os.makedirs(folder, exist_ok=True)
    nope = os.path.join(tmp, "no-model")
    missing = os.path.join(tmp, "nonexist.pcap")
    res = netlm("classify", "--model", model, missing, ok=False)
    check("classify a missing capture: the error only, no header on stdout",
          one_error_line(res, "nonexist.pcap") and res.stdout == "", f"{res.stdout!r} {res.stderr}")
    for args, needle in ((["classify", "--model", nope, "--test_path", good, "-o", folder], "an-existing-folder"),
                         (["classify", "--model", nope, "--test_path", good, "--prediction_path", folder],
                          "an-existing-folder"),
                         (["classify", "--model", nope, missing], "nonexist.pcap"),
                         (["classify", "--model", nope, "--test_path", os.path.join(tmp, "gone.tsv")], "gone.tsv"),
                         (["generate", "--model", nope, "--test_path", good, "-o", folder], "an-existing-folder")):
        res = netlm(*args, ok=False)
        check(f"{args[0]} {' '.join(a for a in args if a.startswith('-'))}: the input/output error before the model's",
              one_error_line(res, needle) and res.stdout == "", res.stderr)


def test_generate_refuses_classifier(twin, tmp):
    model = os.path.join(twin, "gpt2", "model")
    good = os.path.join(tmp, "gen-refuse.tsv")
    with open(good, "w") as f:
        f.write("label\ttext_a\n0000 003c\t0a0b 0c0d\n")
    out = os.path.join(tmp, "gen-refuse.out")
    res = netlm("generate", "--model", model, "--test_path", good, "-o", out, ok=False)
    check("generate with a classification model: one error line, exit 2, no output",
          one_error_line(res, "classification model") and res.returncode == 2 and not os.path.exists(out), res.stderr)


def test_tsv_warnings(twin, tmp):
    """Rows a model would misread are warned about in one line per kind, naming the file and
    counting them; the seed's own files (4-hex tokens, \r\n) get no warning."""
    model = os.path.join(twin, "gpt2", "model")
    fx = fixture(os.path.join(twin, "gpt2"))
    texts = rows_text(fx["input_ids"], fx["lengths"])
    clean = os.path.join(tmp, "clean.tsv")
    with open(clean, "w", newline="") as f:
        f.write("label\ttext_a\r\n" + "".join(f"{i % 5}\t{t}\r\n" for i, t in enumerate(texts)))
    res = netlm("classify", "--model", model, "--test_path", clean, "-q", "-o", os.path.join(tmp, "clean.out"))
    check("a seed-style TSV: no warning", "warning" not in res.stderr, res.stderr)
    odd = os.path.join(tmp, "odd-tokens.tsv")
    with open(odd, "w") as f:
        f.write(f"label\ttext_a\n0\t{texts[0]} zzzz\n1\t{texts[1]}\n2\tzzzz {texts[2]} qq\n")
    res = netlm("classify", "--model", model, "--test_path", odd, "-q", "-o", os.path.join(tmp, "odd.out"))
    warn = [l for l in res.stderr.splitlines() if "warning" in l]
    check("non-hex tokens: one warning naming the file, 3 tokens in 2 rows",
          len(warn) == 1 and "odd-tokens.tsv" in warn[0] and "3 tokens in 2 rows" in warn[0] and "zzzz" in warn[0],
          res.stderr)
    cut = os.path.join(tmp, "cut.tsv")
    with open(cut, "w") as f:
        f.write(f"label\ttext_a\n0\t{texts[0]}\n1\t{texts[1][:7]}")  # cut inside a token, no line end
    res = netlm("classify", "--model", model, "--test_path", cut, "-q", "-o", os.path.join(tmp, "cut.out"))
    warn = [l for l in res.stderr.splitlines() if "warning" in l]
    check("a file cut short: a warning naming the file and its last line",
          any("cut.tsv" in l and "line 3" in l and "cut short" in l for l in warn), res.stderr)


def png_gray(path):
    """An 8-bit RGB/RGBA PNG (what gnuplot's pngcairo writes) as a 2-D array of the mean of its
    colour channels."""
    data = open(path, "rb").read()
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ctype in (2, 6), (depth, ctype)
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    rows = []
    for y in range(height):
        ftype, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(np.frombuffer(bytes(line), dtype=np.uint8).reshape(width, bpp)[:, :3].mean(axis=1))
        prev = line
    return np.array(rows)


def test_confusion_labels(twin, tmp):
    """confusion.png (netlm eval --output-dir) names the predicted classes below the x axis in
    full: the dark pixels under the plot reach as far down as the longest class name needs
    (a cut label is two letters, about 12 pixels)."""
    if not os.path.exists("/usr/bin/gnuplot"):
        check("confusion.png: skipped, no gnuplot", True)
        return
    model = os.path.join(SOURCE, "models", "ustc-tfc2016")
    labels = json.load(open(os.path.join(model, "config.json")))["netlm"]["labels"]
    rng = np.random.default_rng(2)
    tsv = os.path.join(tmp, "confusion.tsv")
    with open(tsv, "w") as f:
        f.write("label\ttext_a\n")
        for i in range(2 * len(labels)):
            f.write(f"{i % len(labels)}\t" + " ".join(f"{v:04x}" for v in rng.integers(0, 65536, 40)) + "\n")
    out = os.path.join(tmp, "eval-out")
    netlm("eval", "--model", model, "--test_path", tsv, "--output-dir", out, "--threads", "1")
    img = png_gray(os.path.join(out, "confusion.png"))
    dark = img < 128
    axis = max(y for y in range(dark.shape[0]) if dark[y].sum() > dark.shape[1] // 3)  # the plot's bottom border
    below = [y for y in range(axis + 1, dark.shape[0]) if dark[y].any()]
    reach = (max(below) - axis) if below else 0
    longest = max(len(l) for l in labels)
    check(f"confusion.png: the x-axis class names are whole ({longest} characters need about {4 * longest} pixels)",
          reach >= 4 * longest, f"the labels reach {reach} pixels below the axis")


def test_sessions_vlan_documented(twin, tmp):
    res = netlm("sessions", "--help")
    readme = open(os.path.join(SOURCE, "README.md")).read()
    row = next((l for l in readme.splitlines() if l.startswith("| `netlm sessions")), "")
    check("sessions: --help and README's command table explain the vlan column",
          "vlan" in res.stdout and "VLAN ID" in res.stdout and "`vlan`" in row, row)


def test_version(twin, tmp):
    """--version: the version, what the build holds, and the GPUs, which must be what --device
    cuda then finds."""
    res = netlm("--version")
    lines = res.stdout.splitlines()
    check("--version: 'netlm X.Y.Z', a build line, the GPUs",
          len(lines) >= 3 and lines[0].split(" ")[0] == "netlm" and lines[0].count(".") == 2 and
          lines[1].startswith("build: CUDA backend ") and "libpcap" in lines[1] and "DPDK" in lines[1] and
          (lines[2] == "GPUs: none visible" or lines[2].startswith("GPU cuda:0: ")), res.stdout)
    if lines[2:3] == ["GPUs: none visible"]:
        good = os.path.join(tmp, "version.tsv")
        with open(good, "w") as f:
            f.write("label\ttext_a\n0\t0a0b 0c0d\n")
        model = os.path.join(twin, "gpt2", "model")
        out = os.path.join(tmp, "version-out.tsv")
        dev = netlm("classify", "--model", model, "--test_path", good, "--device", "cuda", "--output", out, "-q",
                    ok=False)
        err = dev.stderr.strip().splitlines()
        check("no GPU visible: --device cuda is one error line naming it, no output",
              dev.returncode != 0 and len(err) == 1 and "cuda" in err[0] and not os.path.exists(out), dev.stderr)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        twin = os.path.join(tmp, "twin")
        subprocess.run(["/usr/bin/python3", os.path.join(SOURCE, "tests", "reference", "twin.py"), "fixtures", twin],
                       check=True, stdout=subprocess.DEVNULL)
        for test in (test_classify_tsv, test_generate, test_classify_captures, test_convert, test_seed_names,
                     test_bad_input, test_seed_inference, test_checks_before_work, test_generate_refuses_classifier,
                     test_tsv_warnings, test_confusion_labels, test_sessions_vlan_documented, test_version):
            try:
                test(twin, tmp)
            except Exception as e:  # a crash of one part is a failure, the others still run
                check(test.__name__, False, repr(e))
    finish()


if __name__ == "__main__":
    main()
