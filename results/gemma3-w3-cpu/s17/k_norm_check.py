"""Session 17: can BoA's k statistics take the k_norm Jacobian with the shared H_in the pipeline already has?

Session 16 (``../s16/qk_norm_check.py``) found the RMS norm's Jacobian worth 15% of k's attention-output error on
Gemma-3-270M, with a per-head H_in weighted by 1/rms(y)^2. k = R G P y / rms(y) (P = I - y y^T / |y|^2), so an output
error dy of k_proj costs (1/rms^2) dy^T P A P dy with A = G M G BoA's H_out. Variants, k of a layer quantized alone
(W4 g128 asymmetric, Hessian grid, the same damping), per kv head:
  gptq             H_in = (2/T) sum x x^T, H_out = I
  boa              H_in, H_out = A
  boa-norm         per head H_in,h = (2/T) sum w x x^T, H_out,h = sum w P A P / sum w, w = 1/rms(y_h)^2 (session 16)
  boa-norm-shared  the shared H_in with H_out,h = sum w P A P / sum w (what the pipeline could do without per-head H_in)
  boa-proj         the shared H_in with H_out,h = mean P A P (errors along y free, no token weights)
Scored in float64 through the layer's real k_norm, RoPE and causal softmax on the fitting windows A and unseen
windows B: relative attention-output error |A'V - AV|^2 / |AV|^2 (x 1e3).
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 python k_norm_check.py [N_WINDOWS] [LAYERS]   (Gemma-3-270M; LAYERS 2,8,14)"""
import sys
import time

import torch

from turboboa_export.algorithms.gptq import gptq_quantize
from turboboa_export.algorithms.grid import GridSpec
from turboboa_export.algorithms.turboboa import TurboBoAOptions, turboboa_two_sided
from turboboa_export.calibration import calibration_batch
from turboboa_export.models import load_model, materialize_builtin

n = int(sys.argv[1]) if len(sys.argv) > 1 else 8
model, tok = load_model(str(materialize_builtin("gemma3-270m")))
torch.set_grad_enabled(False)
layers = model.model.layers
pick = [int(i) for i in sys.argv[2].split(",")] if len(sys.argv) > 2 else [2, 8, 14]
cfg = model.config
heads, kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
rep = heads // kv
spec, damping = GridSpec(4, False, "hessian"), 0.01 + 0.25 * cfg.hidden_size / (n * 512)
seen = {}


def grab(i):
    def hook(mod, args, kwargs):
        seen[i] = (kwargs["hidden_states"][0].double(), tuple(t[0].double() for t in kwargs["position_embeddings"]))
    return hook


for i in pick:
    layers[i].self_attn.register_forward_pre_hook(grab(i), with_kwargs=True)


def windows(seed):
    ids, _ = calibration_batch(tok, "exl2-c4", n, 512, seed)
    out = {i: [] for i in pick}
    for b in range(n):
        model.model(ids[b : b + 1])
        for i in pick:
            out[i].append(seen[i])
    return out


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), -1)


def qk(attn, w_k, x, cos, sin):
    """Post-norm post-RoPE q [heads, L, d], k [kv, L, d] (k from w_k) and k_proj's output y_k [kv, L, d]."""
    def norm(mod, y):
        return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + mod.eps) * mod(torch.ones(hd)).double()
    y_q = (x @ attn.q_proj.weight.double().T).view(-1, heads, hd).transpose(0, 1)
    y_k = (x @ w_k.T).view(-1, kv, hd).transpose(0, 1)
    rope = lambda t: t * cos + rotate_half(t) * sin  # noqa: E731
    return rope(norm(attn.q_norm, y_q)), rope(norm(attn.k_norm, y_k)), y_k


def rope_mean(c, cos, sin):
    """mean_l R_l^T C R_l by explicit matrices (slow, obvious)."""
    j = rotate_half(torch.eye(hd, dtype=c.dtype)).T
    acc = torch.zeros_like(c)
    for l in range(cos.shape[0]):
        r = torch.diag(cos[l]) + torch.diag(sin[l]) @ j
        acc += r.T @ c @ r
    return acc / cos.shape[0]


def fit(layer, data):
    attn = layer.self_attn
    w_k = attn.k_proj.weight.double()
    g_k = attn.k_norm(torch.ones(hd)).double()
    h_in, cq, xs, yks = 0, torch.zeros(heads, hd, hd, dtype=torch.float64), [], []
    for x, (cos, sin) in data:
        q, _, y_k = qk(attn, w_k, x, cos, sin)
        h_in = h_in + x.T @ x
        cq += q.transpose(-1, -2) @ q
        xs.append(x), yks.append(y_k)
    x, y, t = torch.cat(xs), torch.cat(yks, 1), sum(x.shape[0] for x in xs)
    a = g_k[:, None] * rope_mean((cq / t).reshape(kv, rep, hd, hd).mean(1), cos, sin) * g_k[None, :]  # G M G
    h_in = h_in / t
    u = y / y.norm(dim=-1, keepdim=True)  # [kv, T, d]

    def projected(w):  # sum_t w_t P_t A P_t / sum_t w_t, P_t = I - u_t u_t^T, per head
        au = torch.einsum("hij,htj->hti", a, u)
        uau = (u * au).sum(-1)
        sw = w.sum(-1)[:, None, None]
        return (a * sw - torch.einsum("ht,hti,htj->hij", w, u, au) - torch.einsum("ht,hti,htj->hij", w, au, u)
                + torch.einsum("ht,hti,htj->hij", w * uau, u, u)) / sw

    w_rms = 1 / y.pow(2).mean(-1)  # 1/rms^2 [kv, T]
    h_in_w = torch.einsum("ht,ti,tj->hij", w_rms, x, x) / t
    f32 = lambda *ts: [v.float() for v in ts]  # noqa: E731
    boa = TurboBoAOptions(rows=1, adaptive_grid=False, refine_iters=0, percdamp=damping)
    wk3 = w_k.view(kv, hd, -1)

    def per_head(hi, ho):
        return torch.cat([turboboa_two_sided(*f32(wk3[h : h + 1], hi[h] if hi.dim() == 3 else hi, ho[h : h + 1]),
                                             spec, 128, None, boa).dequantize() for h in range(kv)]).double()

    return {"gptq": gptq_quantize(*f32(w_k, h_in), spec, 128, damping).dequantize().double(),
            "boa": per_head(h_in, a),
            "boa-norm": per_head(h_in_w, projected(w_rms)),
            "boa-norm-shared": per_head(h_in, projected(w_rms)),
            "boa-proj": per_head(h_in, projected(torch.ones_like(w_rms)))}


def error(layer, data, w_hat):
    attn = layer.self_attn
    w_v, w_k = attn.v_proj.weight.double(), attn.k_proj.weight.double()
    num = den = 0.0
    for x, (cos, sin) in data:
        q, k, _ = qk(attn, w_k, x, cos, sin)
        _, k2, _ = qk(attn, w_hat, x, cos, sin)
        k, k2 = k.repeat_interleave(rep, 0), k2.repeat_interleave(rep, 0)
        v = (x @ w_v.T).view(-1, kv, hd).transpose(0, 1).repeat_interleave(rep, 0)
        mask = torch.ones(x.shape[0], x.shape[0], dtype=torch.bool).tril()
        o, o2 = (torch.softmax((q @ kk.transpose(-1, -2) * attn.scaling).masked_fill(~mask, float("-inf")), -1) @ v
                 for kk in (k, k2))
        num += float(((o2 - o) ** 2).sum())
        den += float((o**2).sum())
    return num / den


t0 = time.time()
A, B = windows(0), windows(1)
print(f"gemma3-270m, {n} x 512 windows each (A fit, B unseen), k only, W4 g128, damping {damping:.3f}; "
      "attention-output error x 1e3, A / B", flush=True)
tot = {}
for i in pick:
    fits = fit(layers[i], A[i])
    for meth, w_hat in fits.items():
        row = [1e3 * error(layers[i], d[i], w_hat) for d in (A, B)]
        tot[meth] = [s + r for s, r in zip(tot.get(meth, [0, 0]), row)]
        print(f"{i:2d} | {meth:15s} | {row[0]:7.3f} / {row[1]:7.3f}", flush=True)
for meth, row in tot.items():
    print(f"sum | {meth:15s} | {row[0]:7.3f} / {row[1]:7.3f}")
print(f"{time.time() - t0:.0f} s")
