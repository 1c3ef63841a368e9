"""modeling.py — the PyTorch twin of netlm's model (docs/model.md): GPT-2 (standard or UER
LayerNorm, tanh or erf GELU) and Qwen2 (RMSNorm, half-split RoPE, GQA, SwiGLU), a classification
head and greedy generation with a KV cache.

Written from the architecture definitions (Hugging Face modeling_gpt2.py / modeling_qwen2.py
eager paths, UER-py's LayerNorm); it never calls netlm. Module names are the Hugging Face tensor
names, so state_dict() keys are exactly the names in model.safetensors.

Public entry points: Config / load_config / config_to_hf, build_model, init_random, load_model,
save_model, Model.backbone / lm_logits / pool / classify / generate.
"""
import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import st

PAD_ID, SEP_ID, CLS_ID = 0, 1, 2
POOLINGS = ("mean", "first", "last", "max")
TANH_GELUS = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh")
TOKENIZER_DEFAULTS = {"header_mode": "full", "stride": 2, "tokens_per_packet": 64, "packets": 32,
                      "sep_between_packets": False, "vocab": "builtin"}


class ConfigError(Exception):
    pass


# ---------------------------------------------------------------- configuration (config.json)

class Config:
    """The numbers netlm's struct model_config holds (model.h), from HF config.json + "netlm"."""

    def __init__(self, **kw):
        self.arch = kw["arch"]                      # "gpt2" | "qwen2"
        self.vocab_size = int(kw["vocab_size"])
        self.hidden = int(kw["hidden"])
        self.layers = int(kw["layers"])
        self.heads = int(kw["heads"])
        self.kv_heads = int(kw.get("kv_heads") or self.heads)
        self.ffn = int(kw["ffn"])
        self.max_positions = int(kw["max_positions"])
        self.norm_eps = float(kw["norm_eps"])
        self.rope_theta = float(kw.get("rope_theta", 10000.0))
        self.tie = bool(kw.get("tie", True))
        self.norm = kw["norm"]                      # "standard" | "uer" | "rms"
        self.act = kw["act"]                        # "gelu_tanh" | "gelu_erf" | "silu"
        self.act_name = kw.get("act_name", {"gelu_tanh": "gelu_new", "gelu_erf": "gelu", "silu": "silu"}[self.act])
        self.task = kw.get("task", "lm")
        self.labels = list(kw.get("labels") or [])
        self.pooling = kw.get("pooling", "mean")
        self.seq_length = int(kw.get("seq_length", 128))
        self.tgt_seq_length = int(kw.get("tgt_seq_length", 4))
        self.tokenizer = dict(TOKENIZER_DEFAULTS, **(kw.get("tokenizer") or {}))
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ConfigError("heads must divide hidden and kv_heads must divide heads")
        self.head_dim = self.hidden // self.heads
        if self.arch == "qwen2" and self.head_dim % 2:
            raise ConfigError("RoPE needs an even head_dim")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {self.pooling!r}")

    def arch_numbers(self):
        """What must survive a netlm round trip unchanged (eps compared as fp32, as model.h keeps it)."""
        d = {k: getattr(self, k) for k in ("arch", "vocab_size", "hidden", "layers", "heads", "kv_heads",
                                           "ffn", "max_positions", "norm", "act", "tie", "labels", "pooling")}
        d["norm_eps"] = float(np.float32(self.norm_eps))
        if self.arch == "qwen2":
            d["rope_theta"] = self.rope_theta
        return d


def _req(d, key, where):
    if key not in d or d[key] is None:
        raise ConfigError(f"{where}: missing required key {key!r}")
    return d[key]


def config_from_dict(d, where="config.json"):
    mt = d.get("model_type")
    nl = d.get("netlm") or {}
    common = dict(task=nl.get("task", "lm"), labels=nl.get("labels"), pooling=nl.get("pooling", "mean"),
                  seq_length=nl.get("seq_length", 128), tgt_seq_length=nl.get("tgt_seq_length", 4),
                  tokenizer=nl.get("tokenizer"))
    if mt == "gpt2":
        c = int(_req(d, "n_embd", where))
        act = d.get("activation_function", "gelu_new")
        if act in TANH_GELUS:
            a = "gelu_tanh"
        elif act == "gelu":
            a = "gelu_erf"
        else:
            raise ConfigError(f"{where}: activation_function {act!r} is not supported")
        ln = nl.get("layer_norm", "standard")
        if ln not in ("standard", "uer"):
            raise ConfigError(f"{where}: netlm.layer_norm {ln!r}")
        return Config(arch="gpt2", vocab_size=_req(d, "vocab_size", where), hidden=c,
                      layers=_req(d, "n_layer", where), heads=_req(d, "n_head", where),
                      ffn=d.get("n_inner") or 4 * c, max_positions=_req(d, "n_positions", where),
                      norm_eps=d.get("layer_norm_epsilon", 1e-5), tie=True, norm=ln, act=a, act_name=act,
                      **common)
    if mt == "qwen2":
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"{where}: hidden_act {act!r} (silu only)")
        return Config(arch="qwen2", vocab_size=_req(d, "vocab_size", where), hidden=_req(d, "hidden_size", where),
                      layers=_req(d, "num_hidden_layers", where), heads=_req(d, "num_attention_heads", where),
                      kv_heads=d.get("num_key_value_heads"), ffn=_req(d, "intermediate_size", where),
                      max_positions=d.get("max_position_embeddings", 32768), norm_eps=d.get("rms_norm_eps", 1e-6),
                      rope_theta=d.get("rope_theta", 10000.0), tie=d.get("tie_word_embeddings", False),
                      norm="rms", act="silu", **common)
    raise ConfigError(f"{where}: model_type {mt!r} (gpt2 | qwen2; the twin does not read UER configs)")


def load_config(path):
    with open(path) as f:
        return config_from_dict(json.load(f), path)


def config_to_hf(cfg, torch_dtype="float32"):
    """Hugging Face config.json content with the netlm object."""
    nl = {"task": cfg.task}
    if cfg.labels:
        nl["labels"] = list(cfg.labels)
    nl.update(pooling=cfg.pooling, seq_length=cfg.seq_length, tgt_seq_length=cfg.tgt_seq_length)
    if cfg.arch == "gpt2":
        nl["layer_norm"] = cfg.norm
    nl["tokenizer"] = dict(cfg.tokenizer)
    if cfg.arch == "gpt2":
        d = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
             "n_embd": cfg.hidden, "n_layer": cfg.layers, "n_head": cfg.heads, "n_inner": cfg.ffn,
             "n_positions": cfg.max_positions, "n_ctx": cfg.max_positions, "layer_norm_epsilon": cfg.norm_eps,
             "activation_function": cfg.act_name, "tie_word_embeddings": True, "torch_dtype": torch_dtype}
    else:
        d = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": cfg.vocab_size,
             "hidden_size": cfg.hidden, "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads,
             "num_key_value_heads": cfg.kv_heads, "intermediate_size": cfg.ffn,
             "max_position_embeddings": cfg.max_positions, "rope_theta": cfg.rope_theta,
             "rms_norm_eps": cfg.norm_eps, "hidden_act": "silu", "tie_word_embeddings": cfg.tie,
             "use_sliding_window": False, "torch_dtype": torch_dtype}
    d["netlm"] = nl
    return d


# ---------------------------------------------------------------- building blocks

def _param(*shape, dtype):
    return nn.Parameter(torch.empty(*shape, dtype=dtype), requires_grad=False)


class Weight(nn.Module):
    """A bare weight (embedding tables, lm_head)."""

    def __init__(self, *shape, dtype):
        super().__init__()
        self.weight = _param(*shape, dtype=dtype)


class Conv1D(nn.Module):
    """Hugging Face GPT-2 Conv1D: y = x @ W + b with W stored [in, out]."""

    def __init__(self, nin, nout, dtype):
        super().__init__()
        self.nout = nout
        self.weight = _param(nin, nout, dtype=dtype)
        self.bias = _param(nout, dtype=dtype)

    def forward(self, x):
        y = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
        return y.view(*x.shape[:-1], self.nout)


class Linear(nn.Module):
    """nn.Linear without its default init: weight [out, in], optional bias."""

    def __init__(self, nin, nout, bias, dtype):
        super().__init__()
        self.weight = _param(nout, nin, dtype=dtype)
        self.bias = _param(nout, dtype=dtype) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class LayerNorm(nn.Module):
    """GPT-2's nn.LayerNorm: (x - mean) / sqrt(biased var + eps) * w + b."""

    def __init__(self, c, eps, dtype):
        super().__init__()
        self.eps = eps
        self.weight = _param(c, dtype=dtype)
        self.bias = _param(c, dtype=dtype)

    def forward(self, x):
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


class UERLayerNorm(nn.Module):
    """UER-py's LayerNorm: w * (x - mean) / (std + eps) + b, std UNBIASED (N - 1), eps on the std."""

    def __init__(self, c, eps, dtype):
        super().__init__()
        self.eps = eps
        self.weight = _param(c, dtype=dtype)
        self.bias = _param(c, dtype=dtype)

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, unbiased=True, keepdim=True)
        return self.weight * (x - mean) / (std + self.eps) + self.bias


class RMSNorm(nn.Module):
    """Qwen2RMSNorm: x * rsqrt(mean(x^2) + eps) in at least fp32, back to the input dtype, * w."""

    def __init__(self, c, eps, dtype):
        super().__init__()
        self.eps = eps
        self.weight = _param(c, dtype=dtype)

    def forward(self, x):
        dt = x.dtype
        h = x.float() if dt in (torch.float16, torch.bfloat16) else x
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dt)


def make_norm(cfg, dtype):
    if cfg.norm == "standard":
        return LayerNorm(cfg.hidden, cfg.norm_eps, dtype)
    if cfg.norm == "uer":
        return UERLayerNorm(cfg.hidden, cfg.norm_eps, dtype)
    return RMSNorm(cfg.hidden, cfg.norm_eps, dtype)


def _softmax(x):
    return F.softmax(x, dim=-1, dtype=torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype).to(x.dtype)


class KVCache:
    """A static cache per layer, [B, kv_heads, S, d]; rows may sit at different positions."""

    def __init__(self, cfg, batch, max_tokens, dtype):
        shape = (batch, cfg.kv_heads, max_tokens, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype) for _ in range(cfg.layers)]
        self.v = [torch.zeros(shape, dtype=dtype) for _ in range(cfg.layers)]
        self.max_tokens = max_tokens

    def update(self, layer, k, v, start, uniform, kmax):
        """Stores k/v [B, kvh, T, d] at positions start[b] .. start[b] + T - 1; returns the cached
        keys/values of positions 0 .. kmax - 1."""
        T = k.shape[2]
        if uniform is not None:
            self.k[layer][:, :, uniform:uniform + T] = k
            self.v[layer][:, :, uniform:uniform + T] = v
        else:
            b = torch.arange(k.shape[0])
            for t in range(T):
                self.k[layer][b, :, start + t] = k[:, :, t]
                self.v[layer][b, :, start + t] = v[:, :, t]
        return self.k[layer][:, :, :kmax], self.v[layer][:, :, :kmax]


class GPT2Attention(nn.Module):
    def __init__(self, cfg, dtype):
        super().__init__()
        c = cfg.hidden
        self.h, self.d = cfg.heads, cfg.head_dim
        self.c_attn = Conv1D(c, 3 * c, dtype)
        self.c_proj = Conv1D(c, c, dtype)

    def forward(self, x, ctx):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.h, self.d).transpose(1, 2)
        k = k.view(B, T, self.h, self.d).transpose(1, 2)
        v = v.view(B, T, self.h, self.d).transpose(1, 2)
        if ctx.cache is not None:
            k, v = ctx.cache.update(ctx.layer, k, v, ctx.start, ctx.uniform, ctx.kmax)
        att = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.d)
        att = _softmax(att + ctx.mask)
        y = torch.matmul(att, v).transpose(1, 2).reshape(B, T, C)
        return self.c_proj(y)


class GPT2MLP(nn.Module):
    def __init__(self, cfg, dtype):
        super().__init__()
        self.c_fc = Conv1D(cfg.hidden, cfg.ffn, dtype)
        self.c_proj = Conv1D(cfg.ffn, cfg.hidden, dtype)
        self.approx = "tanh" if cfg.act == "gelu_tanh" else "none"

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate=self.approx))


class GPT2Block(nn.Module):
    def __init__(self, cfg, dtype):
        super().__init__()
        self.ln_1 = make_norm(cfg, dtype)
        self.attn = GPT2Attention(cfg, dtype)
        self.ln_2 = make_norm(cfg, dtype)
        self.mlp = GPT2MLP(cfg, dtype)

    def forward(self, x, ctx):
        x = x + self.attn(self.ln_1(x), ctx)
        return x + self.mlp(self.ln_2(x))


def rope_tables(cfg, mode="half"):
    """cos/sin [max_positions, head_dim] as Hugging Face computes them: inv_freq = theta^(-2i/d)
    in fp32, angle = pos * inv_freq in fp32. mode "half" pairs (j, j + d/2) (cat(freqs, freqs));
    "interleaved" pairs (2j, 2j + 1) and "none" rotates nothing (both only to show that the
    fixtures tell them apart)."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    pos = torch.arange(cfg.max_positions, dtype=torch.int64).float()
    freqs = pos[:, None] * inv_freq[None, :]
    if mode == "none":
        freqs = torch.zeros_like(freqs)
    emb = freqs.repeat_interleave(2, dim=-1) if mode == "interleaved" else torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rotate_pairs(x):
    x2 = x.unflatten(-1, (-1, 2))
    return torch.stack((-x2[..., 1], x2[..., 0]), dim=-1).flatten(-2)


class Qwen2Attention(nn.Module):
    def __init__(self, cfg, dtype):
        super().__init__()
        c, self.h, self.kvh, self.d = cfg.hidden, cfg.heads, cfg.kv_heads, cfg.head_dim
        self.q_proj = Linear(c, self.h * self.d, True, dtype)
        self.k_proj = Linear(c, self.kvh * self.d, True, dtype)
        self.v_proj = Linear(c, self.kvh * self.d, True, dtype)
        self.o_proj = Linear(self.h * self.d, c, False, dtype)
        self.scale = self.d ** -0.5

    def forward(self, x, ctx):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.d).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.kvh, self.d).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.kvh, self.d).transpose(1, 2)
        rot = rotate_half if ctx.rope_mode == "half" else rotate_pairs
        q = q * ctx.cos + rot(q) * ctx.sin
        k = k * ctx.cos + rot(k) * ctx.sin
        if ctx.cache is not None:
            k, v = ctx.cache.update(ctx.layer, k, v, ctx.start, ctx.uniform, ctx.kmax)
        n_rep = self.h // self.kvh
        if n_rep > 1:  # repeat_kv
            S = k.shape[2]
            k = k[:, :, None].expand(B, self.kvh, n_rep, S, self.d).reshape(B, self.h, S, self.d)
            v = v[:, :, None].expand(B, self.kvh, n_rep, S, self.d).reshape(B, self.h, S, self.d)
        att = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        att = _softmax(att + ctx.mask)
        y = torch.matmul(att, v).transpose(1, 2).reshape(B, T, self.h * self.d)
        return self.o_proj(y)


class Qwen2MLP(nn.Module):
    def __init__(self, cfg, dtype):
        super().__init__()
        self.gate_proj = Linear(cfg.hidden, cfg.ffn, False, dtype)
        self.up_proj = Linear(cfg.hidden, cfg.ffn, False, dtype)
        self.down_proj = Linear(cfg.ffn, cfg.hidden, False, dtype)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen2Layer(nn.Module):
    def __init__(self, cfg, dtype):
        super().__init__()
        self.input_layernorm = make_norm(cfg, dtype)
        self.self_attn = Qwen2Attention(cfg, dtype)
        self.post_attention_layernorm = make_norm(cfg, dtype)
        self.mlp = Qwen2MLP(cfg, dtype)

    def forward(self, x, ctx):
        x = x + self.self_attn(self.input_layernorm(x), ctx)
        return x + self.mlp(self.post_attention_layernorm(x))


class _Ctx:
    """What every layer of one forward call shares: mask, positions, cache slot."""
    __slots__ = ("mask", "cos", "sin", "cache", "start", "uniform", "kmax", "layer", "rope_mode")


class Classifier(nn.Module):
    def __init__(self, c, labels, dtype):
        super().__init__()
        self.dense = Linear(c, c, True, dtype)
        self.out_proj = Linear(c, labels, True, dtype)

    def forward(self, pooled):
        return self.out_proj(torch.tanh(self.dense(pooled)))


class Model(nn.Module):
    def __init__(self, cfg, dtype=torch.float32, num_labels=None):
        super().__init__()
        self.cfg = cfg
        self.rope_mode = "half"
        c = cfg.hidden
        if cfg.arch == "gpt2":
            self.transformer = nn.Module()
            self.transformer.wte = Weight(cfg.vocab_size, c, dtype=dtype)
            self.transformer.wpe = Weight(cfg.max_positions, c, dtype=dtype)
            self.transformer.h = nn.ModuleList(GPT2Block(cfg, dtype) for _ in range(cfg.layers))
            self.transformer.ln_f = make_norm(cfg, dtype)
        else:
            self.model = nn.Module()
            self.model.embed_tokens = Weight(cfg.vocab_size, c, dtype=dtype)
            self.model.layers = nn.ModuleList(Qwen2Layer(cfg, dtype) for _ in range(cfg.layers))
            self.model.norm = make_norm(cfg, dtype)
            if not cfg.tie:
                self.lm_head = Weight(cfg.vocab_size, c, dtype=dtype)
            cos, sin = rope_tables(cfg)
            self.register_buffer("rope_cos", cos.to(dtype), persistent=False)
            self.register_buffer("rope_sin", sin.to(dtype), persistent=False)
        n = num_labels if num_labels is not None else len(cfg.labels)
        self.classifier = Classifier(c, n, dtype) if n else None

    # -- pieces
    @property
    def dtype(self):
        return self.embed_weight().dtype

    def embed_weight(self):
        return (self.transformer.wte if self.cfg.arch == "gpt2" else self.model.embed_tokens).weight

    def head_weight(self):
        return self.lm_head.weight if (self.cfg.arch == "qwen2" and not self.cfg.tie) else self.embed_weight()

    def set_rope_mode(self, mode):
        """"half" (Qwen2); "interleaved" or "none" are wrong on purpose (sensitivity checks)."""
        cos, sin = rope_tables(self.cfg, mode)
        self.rope_cos, self.rope_sin, self.rope_mode = cos.to(self.dtype), sin.to(self.dtype), mode

    def backbone(self, ids, start=None, cache=None):
        """Final-norm hidden states [B, T, C] of ids [B, T] sitting at positions start[b] + t
        (start: None = 0, an int, or a LongTensor [B]). Attention is causal over everything
        before a position (the cache's earlier positions included), so right padding never
        reaches a real position."""
        cfg = self.cfg
        B, T = ids.shape
        dt = self.dtype
        ctx = _Ctx()
        ctx.cache, ctx.rope_mode = cache, self.rope_mode
        if start is None:
            start = 0
        if isinstance(start, int):
            ctx.uniform, ctx.kmax = start, start + T
            pos = (torch.arange(T) + start)[None, :].expand(B, T)
            qabs = torch.arange(T)[:, None] + start                              # [T, 1]
            allowed = torch.arange(ctx.kmax)[None, :] <= qabs                    # [T, kmax]
            mask = torch.zeros(T, ctx.kmax, dtype=dt).masked_fill_(~allowed, float("-inf"))[None, None]
            ctx.start = torch.full((B,), start, dtype=torch.long)
        else:
            ctx.start = start.long()
            ctx.uniform = None
            ctx.kmax = int(ctx.start.max()) + T
            pos = ctx.start[:, None] + torch.arange(T)[None, :]                 # [B, T]
            allowed = torch.arange(ctx.kmax)[None, None, :] <= pos[:, :, None]  # [B, T, kmax]
            mask = torch.zeros(B, T, ctx.kmax, dtype=dt).masked_fill_(~allowed, float("-inf"))[:, None]
        if int(pos.max()) >= cfg.max_positions:
            raise ValueError(f"position {int(pos.max())} beyond max_positions {cfg.max_positions}")
        ctx.mask = mask
        if cfg.arch == "gpt2":
            tr = self.transformer
            x = F.embedding(ids, tr.wte.weight) + F.embedding(pos, tr.wpe.weight)
            for i, blk in enumerate(tr.h):
                ctx.layer = i
                x = blk(x, ctx)
            return tr.ln_f(x)
        m = self.model
        ctx.cos = F.embedding(pos, self.rope_cos)[:, None]
        ctx.sin = F.embedding(pos, self.rope_sin)[:, None]
        x = F.embedding(ids, m.embed_tokens.weight)
        for i, layer in enumerate(m.layers):
            ctx.layer = i
            x = layer(x, ctx)
        return m.norm(x)

    def lm_logits(self, hidden):
        return F.linear(hidden, self.head_weight())

    @staticmethod
    def pool(hidden, lengths, mode):
        B, T, _ = hidden.shape
        if mode == "first":
            return hidden[:, 0]
        if mode == "last":
            return hidden[torch.arange(B), lengths.long() - 1]
        real = (torch.arange(T)[None, :] < lengths[:, None])[:, :, None]
        if mode == "mean":
            return (hidden * real).sum(1) / lengths[:, None].to(hidden.dtype)
        if mode == "max":
            return hidden.masked_fill(~real, float("-inf")).max(1).values
        raise ValueError(mode)

    def scores(self, pooled):
        return _softmax(self.classifier(pooled))

    def classify(self, ids, lengths, pooling=None):
        """(pooled [B, C], softmax scores [B, labels])."""
        pooled = self.pool(self.backbone(ids), lengths, pooling or self.cfg.pooling)
        return pooled, self.scores(pooled)

    def generate(self, ids, lengths, max_new, stop_id=SEP_ID, early_stop=True, keep_logits=False):
        """Greedy continuation of each row's lengths[b] real ids with a KV cache. A row stops after
        it emits stop_id (kept). Returns out [B, max_new] (unused slots PAD_ID), out_len [B] and,
        with keep_logits, the logits [B, V] of each step."""
        B, T = ids.shape
        lengths = lengths.long()
        cache = KVCache(self.cfg, B, T + max_new, self.dtype)
        h = self.backbone(ids, 0, cache)
        logits = self.lm_logits(h[torch.arange(B), lengths - 1])
        out = torch.full((B, max_new), PAD_ID, dtype=torch.long)
        out_len = torch.zeros(B, dtype=torch.long)
        done = torch.zeros(B, dtype=torch.bool)
        steps = []
        pos = lengths.clone()
        uniform = bool((lengths == lengths[0]).all())
        for s in range(max_new):
            if keep_logits:
                steps.append(logits)
            tok = logits.argmax(-1)
            live = ~done
            out[live, s] = tok[live]
            out_len[live] += 1
            if early_stop:
                done |= tok == stop_id
                if bool(done.all()):
                    break
            if s == max_new - 1:
                break
            h = self.backbone(tok[:, None], int(pos[0]) if uniform else pos, cache)
            logits = self.lm_logits(h[:, 0])
            pos += 1
        return out, out_len, steps

    def generate_nocache(self, ids, lengths, max_new, stop_id=SEP_ID):
        """The same greedy continuation recomputing each row's whole sequence every step."""
        B = ids.shape[0]
        out = torch.full((B, max_new), PAD_ID, dtype=torch.long)
        out_len = torch.zeros(B, dtype=torch.long)
        steps = [[] for _ in range(B)]
        for b in range(B):
            seq = ids[b, :int(lengths[b])].tolist()
            for s in range(max_new):
                logits = self.lm_logits(self.backbone(torch.tensor([seq]))[0, -1])
                steps[b].append(logits)
                tok = int(logits.argmax())
                out[b, s] = tok
                out_len[b] += 1
                seq.append(tok)
                if tok == stop_id:
                    break
        return out, out_len, steps


# ---------------------------------------------------------------- weights in and out

def build_model(cfg, dtype=torch.float32, num_labels=None):
    return Model(cfg, dtype, num_labels)


def init_random(model, gen, emb_std=0.02, mat_std=0.02, bias_std=0.02, norm_w_std=0.0, norm_b_std=0.0,
                head_std=None):
    """Fills every parameter from gen: embeddings N(0, emb_std), matrices N(0, mat_std), biases
    N(0, bias_std), norm weights 1 + N(0, norm_w_std), norm biases N(0, norm_b_std); the defaults
    are the seed's init (N(0, 0.02), ones/zeros)."""
    norms = {n for n, m in model.named_modules() if isinstance(m, (LayerNorm, UERLayerNorm, RMSNorm))}
    for name, p in model.named_parameters():
        owner, leaf = name.rsplit(".", 1)
        buf = torch.empty(p.shape, dtype=torch.float32)
        if owner in norms:
            buf.normal_(0.0, 1.0, generator=gen)
            buf = 1.0 + norm_w_std * buf if leaf == "weight" else norm_b_std * buf
        elif owner.endswith(("wte", "wpe", "embed_tokens")):
            buf.normal_(0.0, emb_std, generator=gen)
        elif owner == "lm_head":
            buf.normal_(0.0, head_std if head_std is not None else emb_std, generator=gen)
        elif leaf == "bias":
            buf.normal_(0.0, bias_std, generator=gen)
        else:
            buf.normal_(0.0, mat_std, generator=gen)
        with torch.no_grad():
            p.copy_(buf)
    return model


IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def load_model(model_dir, dtype=torch.float32):
    """config.json (HF form + netlm object) and the weights (single or sharded; F32/F16/BF16,
    widened to fp32 exactly) into a Model of dtype. Missing, unexpected or misshapen tensors are
    errors; GPT-2 names without the transformer. prefix are accepted, as are the old mask buffers."""
    cfg = load_config(os.path.join(model_dir, "config.json"))
    tensors = st.read_dir(model_dir)
    named = {}
    for name, t in tensors.items():
        if cfg.arch == "gpt2":
            if name.endswith(IGNORED_SUFFIXES):
                continue
            if not name.startswith(("transformer.", "classifier.")):
                name = "transformer." + name
        named[name] = t
    nlab = named["classifier.out_proj.weight"].shape[0] if "classifier.out_proj.weight" in named else 0
    if cfg.labels and nlab != len(cfg.labels):
        raise ConfigError(f"{model_dir}: {len(cfg.labels)} labels in config.json, classifier has {nlab}")
    if cfg.task == "classify" and not nlab:
        raise ConfigError(f"{model_dir}: task classify without classifier tensors")
    model = Model(cfg, dtype, nlab)
    params = dict(model.named_parameters())
    for name in named:
        if name not in params:
            raise ConfigError(f"{model_dir}: unexpected tensor {name}")
    for name, p in params.items():
        if name not in named:
            raise ConfigError(f"{model_dir}: missing tensor {name}")
        t = named[name]
        if tuple(t.shape) != tuple(p.shape):
            raise ConfigError(f"{model_dir}: {name} has shape {list(t.shape)}, expected {list(p.shape)}")
        with torch.no_grad():
            p.copy_(torch.from_numpy(np.array(t.to_f32())))
    return model


def model_tensors(model):
    """name -> fp32 numpy array of every parameter (the HF names)."""
    return {n: p.detach().to(torch.float32).contiguous().numpy() for n, p in model.named_parameters()}


def save_model(model, model_dir, dtype="F32", shards=None):
    """config.json + model.safetensors (dtype F32 or BF16). shards: a list of name lists, one per
    file model-0000i-of-0000n.safetensors, plus model.safetensors.index.json."""
    os.makedirs(model_dir, exist_ok=True)
    ts = model_tensors(model)
    if dtype == "BF16":
        ts = {n: ("BF16", st.f32_to_bf16_bits(a)) for n, a in ts.items()}
    elif dtype != "F32":
        raise ValueError(dtype)
    meta = {"format": "pt"}
    if shards is None:
        st.write(os.path.join(model_dir, "model.safetensors"), ts, meta)
    else:
        if sorted(n for s in shards for n in s) != sorted(ts):
            raise ValueError("shards must cover every tensor once")
        wm, total = {}, 0
        for i, names in enumerate(shards):
            fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            st.write(os.path.join(model_dir, fn), {n: ts[n] for n in names}, meta)
            for n in names:
                wm[n] = fn
                v = ts[n]
                total += (v[1] if isinstance(v, tuple) else v).nbytes
        with open(os.path.join(model_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(wm.items()))}, f, indent=2)
            f.write("\n")
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(config_to_hf(model.cfg, "bfloat16" if dtype == "BF16" else "float32"), f, indent=2)
        f.write("\n")
