"""Session 15: does v's attention-weighted Hessian generalize? Full-precision model, per layer: the v weight of
each kv head quantized by GPTQ (W4 g128 asymmetric, hessian grid, token damping) with either H_v (attention-weighted,
(2/T) sum_h Z_h^T Z_h, Z_h = A_h X) or the plain H_in = (2/T) X^T X, both from windows A (exl2-c4 seed 0); then
both scored by the attention-weighted error tr(dW H_v dW^T) / tr(W H_v W^T) on windows A and on other windows B
(exl2-c4 seed 1).
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python v_overfit.py MODEL [N_WINDOWS] [BITS] [GROUP]"""
import sys
import torch
from turboboa_export.algorithms.gptq import gptq_quantize, token_damping
from turboboa_export.algorithms.grid import GridSpec
from turboboa_export.calibration import calibration_batch
from turboboa_export.models import load_model, materialize_builtin

name = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 8
bits = int(sys.argv[3]) if len(sys.argv) > 3 else 4
group = int(sys.argv[4]) if len(sys.argv) > 4 else 128
model, tok = load_model(str(materialize_builtin(name)))
torch.set_grad_enabled(False)
model.config._attn_implementation = "eager"
layers = model.model.layers
cfg = model.config
heads, kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim if getattr(cfg, "head_dim", None) else cfg.hidden_size // cfg.num_attention_heads


def stats(seed):
    ids, _ = calibration_batch(tok, "exl2-c4", n, 512, seed)
    h_in = [0] * len(layers)
    zz = [0] * len(layers)
    for b in range(n):  # one window at a time, the base model only (no vocabulary-wide logits)
        with torch.no_grad():
            out = model.model(ids[b : b + 1], output_attentions=True, output_hidden_states=True)
        for i, layer in enumerate(layers):
            x = layer.input_layernorm(out.hidden_states[i]).double()[0]  # [L, d]
            a = out.attentions[i].double()[0]  # [heads, L, L]
            z = a @ x  # Z_h = A_h X: [heads, L, d]
            h_in[i] = h_in[i] + x.T @ x
            zz[i] = zz[i] + torch.einsum("hli,hlj->hij", z, z).reshape(kv, heads // kv, x.shape[-1], -1).sum(1)
    t = n * ids.shape[1]
    return [(2 * h / t, 2 * v / (t * (heads // kv)), t) for h, v in zip(h_in, zz)]


A, B = stats(0), stats(1)
spec = GridSpec(bits, False, "hessian")
print(f"{name}, {n} x 512 windows each, W{bits} g{group}: attention-weighted v error (relative), windows A (fit) / B (unseen)")
print("layer | GPTQ on H_v: A / B | GPTQ on H_in: A / B")
tot = torch.zeros(4)
for i, layer in enumerate(layers):
    w = layer.self_attn.v_proj.weight.detach().double().reshape(kv, hd, -1)
    (h_in, h_v, t), (_, h_vb, _) = A[i], B[i]
    row = []
    for h in (h_v, h_in):
        errs = []
        for g in range(kv):
            hg = h[g] if h.dim() == 3 else h
            q = gptq_quantize(w[g].float(), hg.float(), spec, group, token_damping(0.01, 0.25, hg.shape[-1], t)).dequantize().double()
            errs.append(q - w[g])
        d = torch.stack(errs)
        for hs in (h_v, h_vb):
            row.append(float(torch.einsum("gai,gij,gaj->", d, hs, d) / torch.einsum("gai,gij,gaj->", w, hs, w)))
    tot += torch.tensor(row)
    print(f"{i:2d} | {row[0]:.5f} / {row[1]:.5f} | {row[2]:.5f} / {row[3]:.5f}", flush=True)
print(f"sum | {tot[0]:.4f} / {tot[1]:.4f} | {tot[2]:.4f} / {tot[3]:.4f}")
