"""naive.py — a second, deliberately plain implementation of the same architectures (numpy,
float64, one sequence at a time, explicit loops over positions and heads), written straight from
the formulas in docs/model.md. twin.py fixtures checks the torch twin against it, so that a slip
in the twin's batched/vectorised code (q/k/v column order, head split, repeat_kv grouping, RoPE
pairing, UER std) cannot pass into the fixtures unnoticed.
"""
import math

import numpy as np


def _layer_norm(x, w, b, eps, kind):
    mu = x.mean()
    if kind == "uer":
        sd = math.sqrt(((x - mu) ** 2).sum() / (len(x) - 1))
        return w * (x - mu) / (sd + eps) + b
    var = ((x - mu) ** 2).mean()
    return w * (x - mu) / math.sqrt(var + eps) + b


def _rms_norm(x, w, eps):
    return w * (x / math.sqrt((x * x).mean() + eps))


def _gelu(x, act):
    if act == "gelu_erf":
        return np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x])
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _softmax(s):
    e = np.exp(s - s.max())
    return e / e.sum()


def _rope(v, pos, theta):
    """Half-split pairs (j, j + d/2); inv_freq = theta^(-2j/d) in fp32 as Hugging Face."""
    d = len(v)
    h = d // 2
    out = np.empty_like(v)
    for j in range(h):
        inv = np.float32(1.0) / np.float32(np.float32(theta) ** np.float32(2 * j / d))
        ang = float(np.float32(pos) * inv)
        c, s = math.cos(ang), math.sin(ang)
        out[j] = v[j] * c - v[j + h] * s
        out[j + h] = v[j + h] * c + v[j] * s
    return out


def forward(cfg, w, ids):
    """Final-norm hidden states [len(ids), C] of one sequence. w: name -> float64 numpy array
    (Hugging Face names, GPT-2 with the transformer. prefix)."""
    n = len(ids)
    C, H, KV, d = cfg.hidden, cfg.heads, cfg.kv_heads, cfg.head_dim
    if cfg.arch == "gpt2":
        x = np.stack([w["transformer.wte.weight"][t] + w["transformer.wpe.weight"][p] for p, t in enumerate(ids)])
        for i in range(cfg.layers):
            p = f"transformer.h.{i}."
            a = np.stack([_layer_norm(r, w[p + "ln_1.weight"], w[p + "ln_1.bias"], cfg.norm_eps, cfg.norm) for r in x])
            qkv = a @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]  # Conv1D [in, out]
            q, k, v = qkv[:, :C], qkv[:, C:2 * C], qkv[:, 2 * C:]
            y = np.zeros((n, C))
            for h in range(H):
                sl = slice(h * d, (h + 1) * d)
                for t in range(n):
                    s = np.array([q[t, sl] @ k[u, sl] / math.sqrt(d) for u in range(t + 1)])
                    y[t, sl] = _softmax(s) @ v[:t + 1, sl]
            x = x + y @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
            m = np.stack([_layer_norm(r, w[p + "ln_2.weight"], w[p + "ln_2.bias"], cfg.norm_eps, cfg.norm) for r in x])
            f = np.stack([_gelu(r, cfg.act) for r in m @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"]])
            x = x + f @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
        return np.stack([_layer_norm(r, w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], cfg.norm_eps, cfg.norm)
                         for r in x])
    x = np.stack([w["model.embed_tokens.weight"][t] for t in ids])
    group = H // KV
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        a = np.stack([_rms_norm(r, w[p + "input_layernorm.weight"], cfg.norm_eps) for r in x])
        q = a @ w[p + "self_attn.q_proj.weight"].T + w[p + "self_attn.q_proj.bias"]  # Linear [out, in]
        k = a @ w[p + "self_attn.k_proj.weight"].T + w[p + "self_attn.k_proj.bias"]
        v = a @ w[p + "self_attn.v_proj.weight"].T + w[p + "self_attn.v_proj.bias"]
        y = np.zeros((n, H * d))
        for h in range(H):
            g = h // group  # repeat_kv: query head h reads key/value head h // (H / KV)
            qs, ks = slice(h * d, (h + 1) * d), slice(g * d, (g + 1) * d)
            kr = [_rope(k[u, ks], u, cfg.rope_theta) for u in range(n)]
            for t in range(n):
                qr = _rope(q[t, qs], t, cfg.rope_theta)
                s = np.array([qr @ kr[u] * d ** -0.5 for u in range(t + 1)])
                y[t, qs] = _softmax(s) @ v[:t + 1, ks]
        x = x + y @ w[p + "self_attn.o_proj.weight"].T
        m = np.stack([_rms_norm(r, w[p + "post_attention_layernorm.weight"], cfg.norm_eps) for r in x])
        gate = m @ w[p + "mlp.gate_proj.weight"].T
        up = m @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    return np.stack([_rms_norm(r, w["model.norm.weight"], cfg.norm_eps) for r in x])


def lm_logits(cfg, w, hidden):
    head = w["lm_head.weight"] if (cfg.arch == "qwen2" and not cfg.tie) else \
        w["transformer.wte.weight" if cfg.arch == "gpt2" else "model.embed_tokens.weight"]
    return hidden @ head.T


def classify(w, hidden, pooling):
    """softmax(out_proj(tanh(dense(pool(hidden))))) over one sequence's real states."""
    pooled = {"mean": hidden.mean(0), "first": hidden[0], "last": hidden[-1], "max": hidden.max(0)}[pooling]
    z = np.tanh(w["classifier.dense.weight"] @ pooled + w["classifier.dense.bias"])
    return pooled, _softmax(w["classifier.out_proj.weight"] @ z + w["classifier.out_proj.bias"])
