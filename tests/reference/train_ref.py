"""train_ref.py — training references for netlm (tests/reference/README.md, "Training fixtures").

From a model built by the twin (modeling.py) this computes, in float64 from the stored fp32
weights:

* the losses: causal LM over the real next-token targets (`lm`), the seed's QwenWrapper variant
  that also counts [PAD] targets (`lm_pad`), and the classifier's NLL (`cls`);
* the gradient of each loss w.r.t. every tensor of model.safetensors (HF names and layouts);
* two 10-step optimizer trajectories on one batch: `std` (torch.optim.AdamW, clipping, Hugging
  Face linear warmup/decay; loss `cls`) and `uer` (the seed's AdamW without bias correction,
  eps 1e-6, decay after the step; loss `lm`);

and checks itself: autograd against central finite differences (gpt2 per coordinate, every case
along a random direction), the `std` trajectory against torch's own AdamW + clip_grad_norm_ +
LambdaLR, the `uer` update against a transcription of the seed's optimizer class, no dropout.

Every tensor of the model is an optimizer parameter. A tensor a loss does not reach (the
classifier under `lm`, an untied lm_head under `cls`) gets gradient zero — not torch's None —
so its moments stay 0, Adam moves it by 0, and decoupled weight decay still shrinks it.
"""
import ctypes
import json
import math

import numpy as np
import torch
import torch.nn.functional as F

import modeling as M
import naive

# optimizer trajectories (also written to __metadata__ as strings)
STEPS = 10
STD = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, max_grad_norm=1.0,
           warmup_steps=2, total_steps=STEPS, loss="cls")
UER = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01, warmup_ratio=0.1,
           warmup_steps=int(0.1 * STEPS), total_steps=STEPS, loss="lm")
CLIP_EPS = 1e-6           # clip_grad_norm_: coefficient max_norm / (norm + 1e-6), applied when < 1
LABELS_SEED = 20240607

FD_STEP = 1e-4            # central difference step (absolute; 1e-5 and 1e-6 are noisier)
FD_COORDS = 3             # random coordinates per tensor (gpt2)
FD_TOL = 1e-6             # |fd - autograd| <= FD_TOL * (|autograd| + 1e-3 * max|grad of that tensor|) + 1e-10
DIR_STEP = 1e-4           # directional check: norm of the perturbation over all tensors
DIR_TOL = 1e-7            # directional check (every case): relative to |<g, u>| + 1e-3 * |g| |u|
STD_TORCH_TOL = 1e-12     # own std trajectory vs torch's: max |diff| / max |weight|, and per loss/norm
NAIVE_TOL = 1e-7          # the three losses vs naive.py, relative (Qwen2 ≈ 8e-9: fp32 RoPE angles, different pows)
UER_CLASS_TOL = 1e-14     # functional UER update vs the Optimizer-class transcription (same gradients)


def fast_malloc():
    """glibc serves allocations above 32 MiB (the embedding and its gradients here: 33.6 MB in
    float64) with mmap, and every fresh mapping page-faults; keeping everything on the heap and not
    trimming it saves about a third of the run time. No effect on any value; a no-op without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)        # M_MMAP_MAX
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def hf_linear_lambda(warmup, total):
    """transformers.get_linear_schedule_with_warmup's lr_lambda (step = optimizer steps done)."""
    def f(step):
        if step < warmup:
            return float(step) / float(max(1, warmup))
        return max(0.0, float(total - step) / float(max(1, total - warmup)))
    return f


def no_decay_names(model):
    """Tensors that get weight decay 0: every *.bias and every norm weight (GPT-2 ln_1/ln_2/ln_f,
    Qwen2 input_layernorm/post_attention_layernorm/model.norm)."""
    norms = {n for n, mod in model.named_modules() if isinstance(mod, (M.LayerNorm, M.UERLayerNorm, M.RMSNorm))}
    out = []
    for n, _ in model.named_parameters():
        owner = n.rsplit(".", 1)[0]
        if n.endswith(".bias") or owner in norms:
            out.append(n)
    return out


def trainable(m32, dtype=torch.float64):
    """A copy of m32 in dtype (fp32 weights widened exactly) whose parameters require grad."""
    m = M.build_model(m32.cfg, dtype, m32.classifier.out_proj.weight.shape[0] if m32.classifier else 0)
    with torch.no_grad():
        for (n, p), (n2, q) in zip(m.named_parameters(), m32.named_parameters()):
            assert n == n2
            p.copy_(q.to(dtype))
    for p in m.parameters():
        p.requires_grad_(True)
    assert not any(isinstance(mod, torch.nn.Dropout) for mod in m.modules()), "the twin has no dropout"
    return m


def losses(m, ids, lengths, labels, which=("lm", "lm_pad", "cls")):
    """dict loss name -> scalar. One forward over every position (pad ids are ordinary input
    tokens; with causal attention and right padding they never reach a real position).
    lm: row b, t = 0 .. len_b - 2 predicts ids[b, t + 1], mean over those targets.
    lm_pad: t = 0 .. T - 2 for every row (pad targets count), mean over B (T - 1).
    cls: NLL of log_softmax(out_proj(tanh(dense(mean over the real tokens)))), mean over B."""
    B, T = ids.shape
    h = m.backbone(ids)
    out = {}
    if "lm" in which or "lm_pad" in which:
        lg = m.lm_logits(h[:, :-1])                                  # [B, T-1, V]
        nll = torch.logsumexp(lg, -1) - lg.gather(-1, ids[:, 1:, None])[..., 0]
        real_t = torch.arange(T - 1)[None, :] < (lengths - 1)[:, None]
        if "lm" in which:
            out["lm"] = nll[real_t].mean()
        if "lm_pad" in which:
            out["lm_pad"] = nll.mean()
    if "cls" in which:
        assert m.cfg.pooling == "mean"
        pooled = M.Model.pool(h, lengths, "mean")
        out["cls"] = F.nll_loss(F.log_softmax(m.classifier(pooled), -1), labels)
    return out


class HeadNLL(torch.autograd.Function):
    """sum_i w_i (logsumexp(H_i E^T) - H_i . E_{y_i}) with its gradients for H and E computed
    directly (one logits buffer, reused for the softmax in backward); the trajectories use it,
    checked against autograd through losses() at their first step. Backward runs once."""

    @staticmethod
    def forward(ctx, H, E, tgt, w):
        Z = torch.mm(H, E.t())
        zy = Z.gather(1, tgt[:, None])[:, 0]
        mx = Z.max(1, keepdim=True).values
        Z.sub_(mx).exp_()
        s = Z.sum(1, keepdim=True)
        Z.div_(s)
        lse = s.log_()[:, 0] + mx[:, 0]
        ctx.save_for_backward(H, E, tgt, w, Z)
        return (w * (lse - zy)).sum()

    @staticmethod
    def backward(ctx, go):
        H, E, tgt, w, P = ctx.saved_tensors
        wg = w * go
        dZ = P.mul_(wg[:, None])
        dZ[torch.arange(len(tgt)), tgt] -= wg
        gH = torch.mm(dZ, E) if ctx.needs_input_grad[0] else None
        gE = torch.mm(dZ.t(), H) if ctx.needs_input_grad[1] else None
        return gH, gE, None, None


def lm_loss_fused(m, ids, lengths):
    """losses()["lm"] through HeadNLL, on the counted positions only."""
    T = ids.shape[1]
    h = m.backbone(ids)
    real_t = torch.arange(T - 1)[None, :] < (lengths - 1)[:, None]
    H = h[:, :-1][real_t]
    tgt = ids[:, 1:][real_t]
    w = torch.full((len(tgt),), 1.0 / len(tgt), dtype=H.dtype)
    return HeadNLL.apply(H, m.head_weight(), tgt, w)


def losses_fast(m, ids, lengths, labels):
    """losses() without autograd, for the finite differences: the same sums, fp64 exp without
    the max shift (fd_check asserts max logit < 300 once), about twice as fast as logsumexp."""
    B, T = ids.shape
    with torch.no_grad():
        h = m.backbone(ids)
        lg = m.lm_logits(h[:, :-1])
        tgt = lg.gather(-1, ids[:, 1:, None])[..., 0]
        assert lg.is_contiguous()
        e = lg.numpy()
        np.exp(e, out=e)  # numpy's exp is about twice as fast as this torch's
        nll = torch.from_numpy(e.sum(-1)).log_() - tgt
        real_t = torch.arange(T - 1)[None, :] < (lengths - 1)[:, None]
        pooled = M.Model.pool(h, lengths, "mean")
        cls = F.nll_loss(F.log_softmax(m.classifier(pooled), -1), labels)
    return {"lm": float(nll[real_t].mean()), "lm_pad": float(nll.mean()), "cls": float(cls)}


def grads_of(m, loss, retain=False):
    """name -> gradient (zeros where loss does not reach the tensor)."""
    names = [n for n, _ in m.named_parameters()]
    params = [p for _, p in m.named_parameters()]
    gs = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=retain)
    return {n: (g if g is not None else torch.zeros_like(p)) for n, p, g in zip(names, params, gs)}


# ---------------------------------------------------------------- optimizers

def global_norm(grads):
    """sqrt of the sum of squares, as clip_grad_norm_ (norm of the per-tensor norms)."""
    return float(torch.norm(torch.stack([torch.norm(g) for g in grads.values()])))


def run_std(m32, ids, lengths, labels, hp=STD, dtype=torch.float64):
    """Own AdamW (torch.optim.AdamW semantics) + clipping + HF linear warmup/decay on loss `cls`.
    Returns (weights after, losses, grad norms, lrs)."""
    m = trainable(m32, dtype)
    params = dict(m.named_parameters())
    nd = set(no_decay_names(m))
    mom = {n: torch.zeros_like(p) for n, p in params.items()}
    vel = {n: torch.zeros_like(p) for n, p in params.items()}
    lam = hf_linear_lambda(hp["warmup_steps"], hp["total_steps"])
    b1, b2, eps = hp["beta1"], hp["beta2"], hp["eps"]
    loss_t, norm_t, lr_t = [], [], []
    for s in range(hp["total_steps"]):
        lr = hp["lr"] * lam(s)
        loss = losses(m, ids, lengths, labels, (hp["loss"],))[hp["loss"]]
        g = grads_of(m, loss)
        norm = global_norm(g)
        coef = hp["max_grad_norm"] / (norm + CLIP_EPS)
        loss_t.append(float(loss))
        norm_t.append(norm)
        lr_t.append(lr)
        step = s + 1
        bc1, bc2 = 1 - b1 ** step, 1 - b2 ** step
        with torch.no_grad():
            for n, p in params.items():
                gn = g[n] * coef if coef < 1.0 else g[n]
                wd = 0.0 if n in nd else hp["weight_decay"]
                p.mul_(1 - lr * wd)
                mom[n].mul_(b1).add_(gn, alpha=1 - b1)
                vel[n].mul_(b2).addcmul_(gn, gn, value=1 - b2)
                denom = (vel[n].sqrt() / math.sqrt(bc2)).add_(eps)
                p.addcdiv_(mom[n], denom, value=-lr / bc1)
    return {n: p.detach().clone() for n, p in params.items()}, loss_t, norm_t, lr_t


def run_std_torch(m32, ids, lengths, labels, hp=STD):
    """The same trajectory with torch.optim.AdamW, torch.nn.utils.clip_grad_norm_ and a LambdaLR
    (the Hugging Face schedule), the optimizer step before the scheduler step."""
    m = trainable(m32)
    nd = set(no_decay_names(m))
    named = list(m.named_parameters())
    groups = [{"params": [p for n, p in named if n not in nd], "weight_decay": hp["weight_decay"]},
              {"params": [p for n, p in named if n in nd], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, hf_linear_lambda(hp["warmup_steps"], hp["total_steps"]))
    loss_t, norm_t, lr_t = [], [], []
    for _ in range(hp["total_steps"]):
        opt.zero_grad(set_to_none=True)
        loss = losses(m, ids, lengths, labels, (hp["loss"],))[hp["loss"]]
        loss.backward()
        for _, p in named:  # every tensor takes part (see the module docstring)
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        norm = torch.nn.utils.clip_grad_norm_([p for _, p in named], hp["max_grad_norm"])
        loss_t.append(float(loss))
        norm_t.append(float(norm))
        lr_t.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return {n: p.detach().clone() for n, p in named}, loss_t, norm_t, lr_t


class UERAdamW(torch.optim.Optimizer):
    """Transcription of the seed's optimizer (UER-py uer/utils/optimizers.py AdamW = transformers'
    old AdamW) with correct_bias=False; used only to check uer_step()."""

    def __init__(self, params, lr, betas, eps, weight_decay, correct_bias=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, correct_bias=correct_bias))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.data
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p.data)
                    state["exp_avg_sq"] = torch.zeros_like(p.data)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                beta1, beta2 = group["betas"]
                state["step"] += 1
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                denom = exp_avg_sq.sqrt().add_(group["eps"])
                step_size = group["lr"]
                if group["correct_bias"]:
                    bc1 = 1.0 - beta1 ** state["step"]
                    bc2 = 1.0 - beta2 ** state["step"]
                    step_size = step_size * math.sqrt(bc2) / bc1
                p.data.addcdiv_(exp_avg, denom, value=-step_size)
                if group["weight_decay"] > 0.0:
                    p.data.add_(p.data, alpha=(-group["lr"] * group["weight_decay"]))


def run_uer(m32, ids, lengths, labels, hp=UER, check_grads=None, dtype=torch.float64, check_class=True):
    """The seed's AdamW (no bias correction, eps 1e-6, decay p -= lr wd p after the step, no
    clipping) with the HF linear schedule, warmup int(0.1 x 10) = 1, on loss `lm`. With
    check_class, the same gradients also drive UERAdamW + LambdaLR on a second copy, which must
    stay equal. Returns (weights after, losses, lrs, max relative difference to the class or None)."""
    assert hp["loss"] == "lm"
    m = trainable(m32, dtype)
    params = dict(m.named_parameters())
    nd = set(no_decay_names(m))
    mom = {n: torch.zeros_like(p) for n, p in params.items()}
    vel = {n: torch.zeros_like(p) for n, p in params.items()}
    lam = hf_linear_lambda(hp["warmup_steps"], hp["total_steps"])
    b1, b2, eps = hp["beta1"], hp["beta2"], hp["eps"]
    if check_class:
        shadow = {n: p.detach().clone() for n, p in params.items()}
        groups = [{"params": [shadow[n] for n in params if n not in nd], "weight_decay": hp["weight_decay"]},
                  {"params": [shadow[n] for n in params if n in nd], "weight_decay": 0.0}]
        opt = UERAdamW(groups, lr=hp["lr"], betas=(b1, b2), eps=eps, weight_decay=hp["weight_decay"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    loss_t, lr_t = [], []
    for s in range(hp["total_steps"]):
        lr = hp["lr"] * lam(s)
        loss = lm_loss_fused(m, ids, lengths)
        g = grads_of(m, loss)
        if s == 0 and check_grads is not None:  # the fused head against plain autograd
            loss0, g0 = check_grads
            d = max(float((g[n] - g0[n]).abs().max()) / (float(g0[n].abs().max()) + 1e-300) for n in g)
            assert abs(float(loss) - loss0) <= 1e-13 * loss0 and d <= 1e-12, f"HeadNLL off by {d:.3g}"
        loss_t.append(float(loss))
        lr_t.append(lr)
        with torch.no_grad():
            for n, p in params.items():
                wd = 0.0 if n in nd else hp["weight_decay"]
                mom[n].mul_(b1).add_(g[n], alpha=1 - b1)
                vel[n].mul_(b2).addcmul_(g[n], g[n], value=1 - b2)
                p.addcdiv_(mom[n], vel[n].sqrt().add_(eps), value=-lr)
                p.mul_(1 - lr * wd)
        if check_class:
            assert opt.param_groups[0]["lr"] == lr
            for n in params:
                shadow[n].grad = g[n]
            opt.step()
            sched.step()
    after = {n: p.detach().clone() for n, p in params.items()}
    diff = None
    if check_class:
        scale = max(float(p.abs().max()) for p in after.values())
        diff = max(float((after[n] - shadow[n]).abs().max()) for n in after) / scale
    return after, loss_t, lr_t, diff


# ---------------------------------------------------------------- finite differences

def cls_fast(m, pooled, labels):
    with torch.no_grad():
        return {"cls": float(F.nll_loss(F.log_softmax(m.classifier(pooled), -1), labels))}


def fd_coordinates(m, ids, gen, k=FD_COORDS):
    """name -> flat indices to check: k uniform ones per tensor; for the token embedding k rows
    among the batch's ids plus one row outside it, for the position table k rows < T plus one
    beyond (zero gradient)."""
    B, T = ids.shape
    out = {}
    batch_rows = torch.unique(ids)
    for n, p in m.named_parameters():
        C = p.shape[-1]
        if n in ("transformer.wte.weight", "model.embed_tokens.weight"):
            rows = batch_rows[torch.randint(len(batch_rows), (k,), generator=gen)]
            outside = torch.randint(5, p.shape[0], (50,), generator=gen)
            outside = outside[~torch.isin(outside, batch_rows)][:1]
            rows = torch.cat([rows, outside])
        elif n == "transformer.wpe.weight":
            rows = torch.cat([torch.randint(T, (k,), generator=gen), torch.randint(T, p.shape[0], (1,), generator=gen)])
        else:
            out[n] = torch.randint(p.numel(), (k,), generator=gen).tolist()
            continue
        cols = torch.randint(C, (len(rows),), generator=gen)
        out[n] = (rows * C + cols).tolist()
    return out


def fd_check(m32, ids, lengths, labels, grads, seed):
    """Central differences of all three losses at FD_COORDS random coordinates of every tensor
    against the autograd gradients. Returns (max scaled error, coordinates checked)."""
    m = trainable(m32)
    gen = torch.Generator().manual_seed(seed)
    coords = fd_coordinates(m, ids, gen)
    worst, count = 0.0, 0
    params = dict(m.named_parameters())
    with torch.no_grad():
        h = m.backbone(ids)
        pooled = M.Model.pool(h, lengths, "mean")
        assert float(m.lm_logits(h).max()) < 300.0  # exp without the max shift cannot overflow
    for n in params:  # the LM losses do not reach the classifier: exact zeros, no differences needed
        if n.startswith("classifier."):
            assert not bool(grads["lm"][n].any()) and not bool(grads["lm_pad"][n].any())
    for n, idx in coords.items():
        flat = params[n].data.view(-1)
        gmax = {k: float(grads[k][n].abs().max()) for k in grads}
        head_only = n.startswith("classifier.")
        for i in idx:
            orig = float(flat[i])
            flat[i] = orig + FD_STEP
            lp = cls_fast(m, pooled, labels) if head_only else losses_fast(m, ids, lengths, labels)
            flat[i] = orig - FD_STEP
            lm_ = cls_fast(m, pooled, labels) if head_only else losses_fast(m, ids, lengths, labels)
            flat[i] = orig
            for k in (("cls",) if head_only else grads):
                fd = (lp[k] - lm_[k]) / (2 * FD_STEP)
                an = float(grads[k][n].view(-1)[i])
                err = abs(fd - an) / (FD_TOL * (abs(an) + 1e-3 * gmax[k]) + 1e-10)
                worst = max(worst, err)
                assert err <= 1.0, f"finite difference {k} {n}[{i}]: fd {fd!r} autograd {an!r}"
            count += 1
    return worst, count


def directional_check(m32, ids, lengths, labels, grads, seed):
    """Every case: the losses along one random direction u over all tensors, (L(w + h u) -
    L(w - h u)) / 2h against <g, u>. Returns the largest relative error."""
    m = trainable(m32)
    gen = torch.Generator().manual_seed(seed)
    params = dict(m.named_parameters())
    u = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()}
    unorm = math.sqrt(sum(float((v * v).sum()) for v in u.values()))
    h = DIR_STEP / unorm
    res = []
    with torch.no_grad():
        for sign in (1, -1):
            for n, p in params.items():
                p.add_(u[n], alpha=sign * h)
            res.append(losses_fast(m, ids, lengths, labels))
            for n, p in params.items():
                p.sub_(u[n], alpha=sign * h)
    worst = 0.0
    for k in grads:
        fd = (res[0][k] - res[1][k]) / (2 * h)
        an = sum(float((grads[k][n] * u[n]).sum()) for n in params)
        gnorm = math.sqrt(sum(float((g * g).sum()) for g in grads[k].values()))
        rel = abs(fd - an) / (abs(an) + 1e-3 * gnorm * unorm)
        worst = max(worst, rel)
        assert rel <= DIR_TOL, f"directional derivative {k}: fd {fd!r} autograd {an!r}"
    return worst


# ---------------------------------------------------------------- the fixture

def naive_losses(cfg, w, ids, lengths, labels):
    """The three losses from naive.py (numpy, one sequence at a time)."""
    B, T = ids.shape
    lm, lm_pad, cls = [], [], []
    for b in range(B):
        row = ids[b].tolist()
        hid = naive.forward(cfg, w, row)                  # pad ids are ordinary tokens here
        lg = naive.lm_logits(cfg, w, hid[:-1])
        mx = lg.max(-1, keepdims=True)
        nll = (np.log(np.exp(lg - mx).sum(-1)) + mx[:, 0]) - lg[np.arange(T - 1), row[1:]]
        n = int(lengths[b])
        lm.extend(nll[:n - 1])
        lm_pad.extend(nll)
        _, probs = naive.classify(w, hid[:n], "mean")
        cls.append(-math.log(probs[int(labels[b])]))
    return {"lm": float(np.mean(lm)), "lm_pad": float(np.mean(lm_pad)), "cls": float(np.mean(cls))}


def naive_check(m, ids, lengths, labels, L):
    w = {n: p.detach().double().numpy() for n, p in m.named_parameters()}
    Ln = naive_losses(m.cfg, w, ids, lengths, labels)
    rel = max(abs(Ln[k] - L[k]) / L[k] for k in L)
    assert rel <= NAIVE_TOL, f"losses differ from naive.py by {rel:.3g} (relative): {Ln} vs {L}"
    return rel


def make_labels(B, n_labels):
    """B distinct class ids (a seeded permutation), so that a row reading another row's label
    changes the loss."""
    g = torch.Generator().manual_seed(LABELS_SEED)
    return torch.randperm(n_labels, generator=g)[:B]


def train_fixture(m32, ids, lengths, labels, fd=False, fd_seed=0, uer_class=False):
    """(tensors, metadata, summary) of train.safetensors for the fp32 model m32. fd: the
    per-coordinate finite differences; uer_class: run UERAdamW alongside the uer trajectory."""
    m = trainable(m32)
    names = [n for n, _ in m.named_parameters()]
    L = losses(m, ids, lengths, labels)
    grads = {}
    for i, k in enumerate(("lm", "lm_pad", "cls")):
        grads[k] = grads_of(m, L[k], retain=(i < 2))
    # no dropout anywhere: train() and eval() modes give bitwise the same losses, twice
    m.train()
    again = losses(m, ids, lengths, labels)
    m.eval()
    assert all(float(again[k]) == float(L[k]) for k in L), "losses are not deterministic (dropout?)"
    reached = {k: [n for n in names if bool((grads[k][n] != 0).any())] for k in grads}
    unreached = {k: [n for n in names if n not in reached[k]] for k in grads}
    nd = no_decay_names(m)

    after_std, std_loss, std_norm, std_lr = run_std(m32, ids, lengths, labels)
    t_after, t_loss, t_norm, t_lr = run_std_torch(m32, ids, lengths, labels)
    wscale = max(float(p.abs().max()) for p in after_std.values())
    std_torch_diff = max(float((after_std[n] - t_after[n]).abs().max()) for n in names) / wscale
    loss_diff = max(abs(a - b) / abs(b) for a, b in zip(std_loss, t_loss))
    norm_diff = max(abs(a - b) / abs(b) for a, b in zip(std_norm, t_norm))
    assert std_lr == t_lr, f"lr schedules differ: {std_lr} vs {t_lr}"
    assert std_torch_diff <= STD_TORCH_TOL and loss_diff <= STD_TORCH_TOL and norm_diff <= STD_TORCH_TOL, \
        f"own AdamW differs from torch's: weights {std_torch_diff:.3g}, losses {loss_diff:.3g}, norms {norm_diff:.3g}"
    assert all(x > 0 for x in std_norm) and std_loss[-1] < std_loss[0], "std trajectory does not train"

    after_uer, uer_loss, uer_lr, uer_class_diff = run_uer(m32, ids, lengths, labels, check_class=uer_class,
                                                          check_grads=(float(L["lm"]), grads["lm"]))
    assert uer_class_diff is None or uer_class_diff <= UER_CLASS_TOL, \
        f"UER update differs from its class transcription by {uer_class_diff:.3g}"
    assert uer_loss[-1] < uer_loss[0], "uer trajectory does not train"

    # the losses are well above zero (every row's classifier NLL too) and every reached gradient
    # is non-trivial
    for k in L:
        assert float(L[k]) > 0.5, f"loss_{k} = {float(L[k])}"
    with torch.no_grad():
        cls_logp = F.log_softmax(m.classifier(M.Model.pool(m.backbone(ids), lengths, "mean")), -1)
        row_nll = -cls_logp[torch.arange(len(labels)), labels]
    assert float(row_nll.min()) > 0.05, f"a row's label is almost certain already: {row_nll.tolist()}"
    gnorm = {k: math.sqrt(sum(float((g * g).sum()) for g in grads[k].values())) for k in grads}
    gmin = {k: min(float(grads[k][n].abs().max()) for n in reached[k]) for k in grads}
    for k in grads:
        assert gmin[k] > 1e-6 * gnorm[k], f"grad_{k}: a reached tensor has a negligible gradient"

    # the plain numpy implementation gives the same three losses (every row run over all T ids)
    naive_rel = naive_check(m, ids, lengths, labels, {k: float(v) for k, v in L.items()})

    # how far the twin's own fp32 path lands from this fp64 reference: what an fp32
    # implementation (netlm) should expect, per tensor (metadata; informational)
    m_32 = trainable(m32, torch.float32)
    L32 = losses(m_32, ids, lengths, labels)
    fp32_grad = {}
    for i, k in enumerate(("lm", "lm_pad", "cls")):
        g32 = grads_of(m_32, L32[k], retain=(i < 2))
        fp32_grad[k] = {n: float((g32[n].double() - grads[k][n]).abs().max()) for n in names}
    a32, l32, _, _ = run_std(m32, ids, lengths, labels, dtype=torch.float32)
    fp32_std = {n: float((a32[n].double() - after_std[n]).abs().max()) for n in names}
    fp32_std_loss = max(abs(a - b) / abs(b) for a, b in zip(l32, std_loss))
    a32, l32, _, _ = run_uer(m32, ids, lengths, labels, dtype=torch.float32, check_class=False)
    fp32_uer = {n: float((a32[n].double() - after_uer[n]).abs().max()) for n in names}
    fp32_uer_loss = max(abs(a - b) / abs(b) for a, b in zip(l32, uer_loss))
    fp32_loss = max(abs(float(L32[k]) - float(L[k])) / float(L[k]) for k in L)
    del m_32, a32

    dir_err = directional_check(m32, ids, lengths, labels, grads, fd_seed + 1)
    fd_err, fd_n = fd_check(m32, ids, lengths, labels, grads, fd_seed) if fd else (None, 0)

    out = {"input_ids": ids, "lengths": lengths, "labels": labels}
    for k in L:
        out[f"loss_{k}"] = L[k].detach().reshape(1)
    for k in grads:
        for n in names:
            out[f"grad_{k}/{n}"] = grads[k][n]
    out["std_loss"] = torch.tensor(std_loss, dtype=torch.float64)
    out["std_grad_norm"] = torch.tensor(std_norm, dtype=torch.float64)
    out["std_lr"] = torch.tensor(std_lr, dtype=torch.float64)
    out["uer_loss"] = torch.tensor(uer_loss, dtype=torch.float64)
    out["uer_lr"] = torch.tensor(uer_lr, dtype=torch.float64)
    for n in names:
        out[f"std_after/{n}"] = after_std[n]
        out[f"uer_after/{n}"] = after_uer[n]

    meta = {"reference_dtype": "float64", "dropout": "0 (none; train and eval mode give the same losses)",
            "loss_lm": repr(float(L["lm"])), "loss_lm_pad": repr(float(L["lm_pad"])), "loss_cls": repr(float(L["cls"])),
            "lm_targets": str(int((lengths - 1).sum())), "lm_pad_targets": str(ids.shape[0] * (ids.shape[1] - 1)),
            "labels_seed": str(LABELS_SEED),
            "no_decay": json.dumps(nd),
            "unreached": json.dumps(unreached),
            "unreached_policy": "gradient zero; takes part in the optimizer (moments stay 0, weight decay still applies)",
            "std_optimizer": "torch.optim.AdamW: p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; "
                             "p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)",
            "std_clip": "clip_grad_norm_: g *= max_norm / (norm + 1e-6) when that is < 1; norm over every tensor",
            "std_schedule": "HF get_linear_schedule_with_warmup(warmup_steps, total_steps) at the 0-based step before each update",
            "uer_optimizer": "seed UER AdamW(correct_bias=False): m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; "
                             "p -= lr * m / (sqrt(v) + eps); p -= lr*wd*p; no clipping",
            "uer_schedule": "HF get_linear_schedule_with_warmup(int(warmup_ratio * total_steps), total_steps)",
            "fd_step": repr(FD_STEP), "fd_coords": str(fd_n),
            "fd_max_err_over_tol": "n/a" if fd_err is None else f"{fd_err:.3g}",
            "directional_max_rel_err": f"{dir_err:.3g}",
            "naive_loss_max_rel_diff": f"{naive_rel:.3g}",
            "std_vs_torch_adamw_max_rel_diff": f"{max(std_torch_diff, loss_diff, norm_diff):.3g}",
            "uer_vs_class_max_rel_diff": "n/a" if uer_class_diff is None else f"{uer_class_diff:.3g}",
            "fp32_twin_loss_max_rel_diff": f"{fp32_loss:.3g}",
            "fp32_twin_grad_max_abs_diff": json.dumps({k: {n: float(f"{v:.3g}") for n, v in d.items()} for k, d in fp32_grad.items()}),
            "fp32_twin_std_loss_max_rel_diff": f"{fp32_std_loss:.3g}",
            "fp32_twin_std_after_max_abs_diff": json.dumps({n: float(f"{v:.3g}") for n, v in fp32_std.items()}),
            "fp32_twin_uer_loss_max_rel_diff": f"{fp32_uer_loss:.3g}",
            "fp32_twin_uer_after_max_abs_diff": json.dumps({n: float(f"{v:.3g}") for n, v in fp32_uer.items()})}
    for pre, hp in (("std", STD), ("uer", UER)):
        for k, v in hp.items():
            meta[f"{pre}.{k}"] = repr(v) if isinstance(v, float) else str(v)
    summary = {"loss_lm": round(float(L["lm"]), 6), "loss_lm_pad": round(float(L["lm_pad"]), 6),
               "loss_cls": round(float(L["cls"]), 6), "cls_row_nll": [round(x, 4) for x in row_nll.tolist()],
               "grad_norm": {k: float(f"{gnorm[k]:.4g}") for k in gnorm},
               "min_tensor_max_abs_grad": {k: float(f"{gmin[k]:.3g}") for k in gmin},
               "unreached": unreached,
               "std_loss": [round(x, 5) for x in std_loss], "std_grad_norm": [round(x, 4) for x in std_norm],
               "uer_loss": [round(x, 5) for x in uer_loss],
               "std_vs_torch": meta["std_vs_torch_adamw_max_rel_diff"], "uer_vs_class": meta["uer_vs_class_max_rel_diff"],
               "directional_err": meta["directional_max_rel_err"], "naive_loss_rel": meta["naive_loss_max_rel_diff"],
               "fd_coords": fd_n,
               "fd_err_over_tol": meta["fd_max_err_over_tol"],
               "fp32_twin": {"loss_rel": meta["fp32_twin_loss_max_rel_diff"],
                             "grad_abs_over_max_grad": {k: float(f"{max(d.values()) / max(float(g.abs().max()) for g in grads[k].values()):.3g}")
                                                        for k, d in fp32_grad.items()},
                             "std_after_abs": float(f"{max(fp32_std.values()):.3g}"),
                             "std_after_worst": max(fp32_std, key=fp32_std.get),
                             "uer_after_abs": float(f"{max(fp32_uer.values()):.3g}"),
                             "uer_after_worst": max(fp32_uer, key=fp32_uer.get),
                             "std_loss_rel": meta["fp32_twin_std_loss_max_rel_diff"],
                             "uer_loss_rel": meta["fp32_twin_uer_loss_max_rel_diff"]}}
    return out, meta, summary
