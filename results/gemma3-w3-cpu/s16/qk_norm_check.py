"""Session 16: does BoA's q/k objective miss Gemma 3's q_norm/k_norm? Full-precision model, per layer.

BoA's H_out for q is G M G (M = mean_l R_l^T C_K R_l, G the q_norm gain) on the projection's output y = W x, as if
q = R G y. With a per-head RMS norm the query is q = R G y / rms(y), so an output error dy moves the query by
R G P dy / rms(y) with P = I - y y^T / |y|^2: errors along y cost nothing, and tokens whose y is small cost more.
Variants, each quantizing q (all heads) and k of a layer, W4 g128 (g64 where the width is not a multiple of 128) asymmetric, hessian grid, the same damping:
  gptq       GPTQ on H_in = (2/T) sum x x^T
  boa        BoA (N = 1, grid from the original weights) with H_in and H_out = G M G
  boa-norm   BoA per head with H_in,h = (2/T) sum x x^T / rms(y_h)^2 and H_out,h = sum_t w_t P_t G M G P_t / sum_t w_t,
             w_t = 1/rms(y_h,t)^2
  boa-kl     softmax is blind to a score error shared by all keys of a query, so the first-order change of the
             attention distribution is the variance of the score error under it: q's H_out from the attention-centred
             key covariance sum_t sum_s a_ts (k_s - kbar_t)(k_s - kbar_t)^T (kbar_t = sum_s a_ts k_s), k's H_in from
             the attention-centred inputs sum_t sum_s a_ts (x_s - xbar_t)(x_s - xbar_t)^T (per kv head)
  boa-kl-norm  both corrections
Scored on windows A (fit: exl2-c4 seed 0) and B (unseen: exl2-c4 seed 1), float64, through the real q_norm/k_norm,
RoPE and causal softmax of the layer: relative score error sum (dq.k)^2 / sum (q.k)^2 (the quantity BoA's H_out
models) and relative attention-output error |A' V - A V|^2 / |A V|^2 (V the layer's own values).
On a model without q/k norms (SmolLM2) only gptq, boa and boa-kl run.
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 python qk_norm_check.py MODEL [N_WINDOWS] [LAYERS]   (LAYERS: 0,4,8 ...)"""
import sys
import time

import torch

from turboboa_export.algorithms.gptq import gptq_quantize
from turboboa_export.algorithms.grid import GridSpec
from turboboa_export.algorithms.turboboa import TurboBoAOptions, turboboa_two_sided
from turboboa_export.calibration import calibration_batch
from turboboa_export.models import load_model, materialize_builtin

name = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 16
model, tok = load_model(str(materialize_builtin(name)))
torch.set_grad_enabled(False)
layers = model.model.layers
pick = [int(i) for i in sys.argv[3].split(",")] if len(sys.argv) > 3 else list(range(0, len(layers), 3))
cfg = model.config
heads, kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
group = 128 if cfg.hidden_size % 128 == 0 else 64  # the table's groups: W4 g128 Gemma, g64 SmolLM2
spec, damping = GridSpec(4, False, "hessian"), 0.01 + 0.25 * cfg.hidden_size / (n * 512)
seen = {}


def grab(i):
    def hook(mod, args, kwargs):
        seen[i] = (kwargs["hidden_states"][0].double(), tuple(t[0].double() for t in kwargs["position_embeddings"]))
    return hook


for i in pick:
    layers[i].self_attn.register_forward_pre_hook(grab(i), with_kwargs=True)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), -1)


def rms_norm(norm, y):  # the module's own formula, in float64: y / rms(y) * gain (no norm: y itself)
    if norm is None:
        return y
    gain = norm(torch.ones(hd)).double()
    return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + norm.eps) * gain


def windows(seed):
    ids, _ = calibration_batch(tok, "exl2-c4", n, 512, seed)
    out = {i: [] for i in pick}
    for b in range(n):
        model.model(ids[b : b + 1])
        for i in pick:
            out[i].append(seen[i])
    return out


def project(attn, w_q, w_k, x, cos, sin):
    """Post-norm post-RoPE q [heads, L, d] and k [kv, L, d], pre-norm y_q [heads, L, d], y_k [kv, L, d]."""
    y_q = (x @ w_q.T).view(-1, heads, hd).transpose(0, 1)
    y_k = (x @ w_k.T).view(-1, kv, hd).transpose(0, 1)
    rope = lambda t: t * cos + rotate_half(t) * sin  # noqa: E731
    return rope(rms_norm(getattr(attn, "q_norm", None), y_q)), rope(rms_norm(getattr(attn, "k_norm", None), y_k)), y_q, y_k


def rope_mean(c, cos, sin):
    """mean_l R_l^T C R_l, R_l = diag(cos_l) + diag(sin_l) J, by explicit matrices (slow, obvious)."""
    d = c.shape[-1]
    j = rotate_half(torch.eye(d, dtype=c.dtype)).T
    acc = torch.zeros_like(c)
    for l in range(cos.shape[0]):
        r = torch.diag(cos[l]) + torch.diag(sin[l]) @ j
        acc += r.T @ c @ r
    return acc / cos.shape[0]


def fit(layer, data):
    attn = layer.self_attn
    w_q, w_k = attn.q_proj.weight.double(), attn.k_proj.weight.double()
    has_norm = hasattr(attn, "q_norm")
    g_q, g_k = (norm(torch.ones(hd)).double() if has_norm else torch.ones(hd, dtype=torch.float64)
                for norm in (getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)))
    rep = heads // kv
    h_in = 0
    cq, ck = torch.zeros(heads, hd, hd, dtype=torch.float64), torch.zeros(kv, hd, hd, dtype=torch.float64)
    ckc = torch.zeros(heads, hd, hd, dtype=torch.float64)  # attention-centred key covariance per query head
    hk_c = torch.zeros(kv, x_dim := w_q.shape[1], x_dim, dtype=torch.float64)  # attention-centred inputs, for k
    hk_cn = torch.zeros_like(hk_c)  # the same with each key's input over rms(y_k)
    xs, yqs, yks, cs = [], [], [], []
    for x, (cos, sin) in data:
        q, k, y_q, y_k = project(attn, w_q, w_k, x, cos, sin)
        h_in = h_in + x.T @ x
        cq += q.transpose(-1, -2) @ q
        ck += k.transpose(-1, -2) @ k
        L = x.shape[0]
        mask = torch.ones(L, L, dtype=torch.bool).tril()
        kr = k.repeat_interleave(rep, 0)
        a = torch.softmax((q @ kr.transpose(-1, -2) * attn.scaling).masked_fill(~mask, float("-inf")), -1)
        c = a.sum(1)  # [heads, L]: attention each key receives
        ak = a @ kr  # attended mean key per query
        ckc += torch.einsum("hs,hsi,hsj->hij", c, kr, kr) - ak.transpose(-1, -2) @ ak  # sum_t Var_a_t(k)
        for xx, acc in ((x, hk_c), (x[None] / y_k.pow(2).mean(-1, keepdim=True).sqrt().repeat_interleave(rep, 0), hk_cn)):
            xx = xx.expand(heads, -1, -1)
            ax = a @ xx
            acc += (torch.einsum("hs,hsi,hsj->hij", c, xx, xx) - ax.transpose(-1, -2) @ ax).reshape(kv, rep, x_dim, x_dim).sum(1)
        xs.append(x), yqs.append(y_q), yks.append(y_k), cs.append(c.reshape(kv, rep, L).sum(1))
    t = sum(x.shape[0] for x in xs)
    x, y_q, y_k, ck_w = torch.cat(xs), torch.cat(yqs, 1), torch.cat(yks, 1), torch.cat(cs, 1)
    m_q = rope_mean(ck / t, cos, sin).repeat_interleave(rep, 0)  # H_out for q: keys' covariance, per query head
    m_k = rope_mean((cq / t).reshape(kv, rep, hd, hd).mean(1), cos, sin)
    m_qc = rope_mean(ckc / t, cos, sin)
    gmg = lambda g, m: g[:, None] * m * g[None, :]  # noqa: E731
    a_q, a_k, a_qc = gmg(g_q, m_q), gmg(g_k, m_k), gmg(g_q, m_qc)

    def norm_aware(y, a, extra=None):  # per head: H_in,h ~ sum w x x^T, H_out,h = sum w P A P / sum w
        w = 1 / y.pow(2).mean(-1)  # 1/rms^2 [h, T]
        if extra is not None:
            w = w * extra
        yh = y / y.norm(dim=-1, keepdim=True)
        hi = torch.einsum("ht,ti,tj->hij", w, x, x) / t
        ay = torch.einsum("hij,htj->hti", a, yh)  # A yhat
        yay = (yh * ay).sum(-1)  # yhat^T A yhat
        sw = w.sum(-1)
        ho = a * sw[:, None, None] - torch.einsum("ht,hti,htj->hij", w, yh, ay) - torch.einsum("ht,hti,htj->hij", w, ay, yh) \
            + torch.einsum("ht,hti,htj->hij", w * yay, yh, yh)
        return hi, ho / sw[:, None, None]

    h_in = h_in / t
    hiq, hoq = norm_aware(y_q, a_q)
    hik, hok = norm_aware(y_k, a_k)
    hiqc, hoqc = norm_aware(y_q, a_qc)
    _, hokc = norm_aware(y_k, a_k, ck_w)
    f32 = lambda *ts: [u.float() for u in ts]  # noqa: E731
    boa = TurboBoAOptions(rows=1, adaptive_grid=False, refine_iters=0, percdamp=damping)

    def per_head(w3, hi, ho):
        return torch.cat([turboboa_two_sided(*f32(w3[h : h + 1], hi[h], ho[h : h + 1]), spec, group, None, boa).dequantize()
                          for h in range(w3.shape[0])])

    out = {"q": {}, "k": {}}
    wq3, wk3 = w_q.view(heads, hd, -1), w_k.view(kv, hd, -1)
    out["q"]["gptq"] = out["k"]["gptq"] = None
    for key, w3, h_out in (("q", wq3, a_q), ("k", wk3, a_k)):
        out[key]["gptq"] = gptq_quantize(*f32(w3.reshape(-1, w3.shape[-1]), h_in), spec, group, damping).dequantize()
        out[key]["boa"] = turboboa_two_sided(*f32(w3, h_in, h_out), spec, group, None, boa).dequantize()
    out["q"]["boa-kl"] = turboboa_two_sided(*f32(wq3, h_in, a_qc), spec, group, None, boa).dequantize()
    out["k"]["boa-kl"] = per_head(wk3, hk_c / t, a_k)
    if has_norm:  # the norm's Jacobian: only where the model has q/k norms
        out["q"]["boa-norm"], out["k"]["boa-norm"] = per_head(wq3, hiq, hoq), per_head(wk3, hik, hok)
        out["q"]["boa-kl-norm"] = per_head(wq3, hiqc, hoqc)
        out["k"]["boa-kl-norm"] = per_head(wk3, hk_cn / t, hokc)
    return {k_: {m: v.double() for m, v in d.items()} for k_, d in out.items()}


def errors(layer, data, w_hat_q, w_hat_k):
    attn = layer.self_attn
    w_q, w_k = attn.q_proj.weight.double(), attn.k_proj.weight.double()
    w_v = attn.v_proj.weight.double()
    sc, den, ao, aden = 0.0, 0.0, 0.0, 0.0
    for x, (cos, sin) in data:
        q, k, _, _ = project(attn, w_q, w_k, x, cos, sin)
        q2, k2, _, _ = project(attn, w_hat_q, w_hat_k, x, cos, sin)
        rep = heads // kv
        k, k2 = k.repeat_interleave(rep, 0), k2.repeat_interleave(rep, 0)
        v = (x @ w_v.T).view(-1, kv, hd).transpose(0, 1).repeat_interleave(rep, 0)
        L = x.shape[0]
        mask = torch.ones(L, L, dtype=torch.bool).tril()
        s, s2 = q @ k.transpose(-1, -2) * attn.scaling, q2 @ k2.transpose(-1, -2) * attn.scaling
        sc += float(((s2 - s) ** 2 * mask).sum())
        den += float((s**2 * mask).sum())
        o = torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v
        o2 = torch.softmax(s2.masked_fill(~mask, float("-inf")), -1) @ v
        ao += float(((o2 - o) ** 2).sum())
        aden += float((o**2).sum())
    return sc / den, ao / aden


t0 = time.time()
A, B = windows(0), windows(1)
print(f"{name}, {n} x 512 windows each (A fit, B unseen), W4 g{group}, damping {damping:.3f}; relative errors x 1e3")
print("layer | method | q only: score A / B, attn-out A / B | k only: score A / B, attn-out A / B", flush=True)
tot = {}
for i in pick:
    layer = layers[i]
    fits = fit(layer, A[i])
    wq, wk = layer.self_attn.q_proj.weight.double(), layer.self_attn.k_proj.weight.double()
    for meth in fits["q"]:
        row = [*errors(layer, A[i], fits["q"][meth], wk), *errors(layer, B[i], fits["q"][meth], wk),
               *errors(layer, A[i], wq, fits["k"][meth]), *errors(layer, B[i], wq, fits["k"][meth])]
        row = [1e3 * r for r in row]
        tot[meth] = [a + b for a, b in zip(tot.get(meth, [0] * 8), row)]
        print(f"{i:2d} | {meth:9s} | q: {row[0]:7.3f} / {row[2]:7.3f}, {row[1]:7.3f} / {row[3]:7.3f} | "
              f"k: {row[4]:7.3f} / {row[6]:7.3f}, {row[5]:7.3f} / {row[7]:7.3f}", flush=True)
for meth, row in tot.items():
    print(f"sum | {meth:9s} | q: {row[0]:7.3f} / {row[2]:7.3f}, {row[1]:7.3f} / {row[3]:7.3f} | "
          f"k: {row[4]:7.3f} / {row[6]:7.3f}, {row[5]:7.3f} / {row[7]:7.3f}")
print(f"{time.time() - t0:.0f} s")
