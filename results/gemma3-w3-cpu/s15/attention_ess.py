"""Session 15: how many tokens v's attention-weighted statistics really rest on. Per layer, over 4 exl2-c4
calibration windows of 512 (seed 0), per query head: the Kish effective sample size of the attention each key
token receives, ESS = (sum_j w_j)^2 / sum_j w_j^2 with w_j = sum_i A_ij (L for attention to self, 1 when all
queries attend one token), as a fraction of L; and the share of all attention received by position 0.
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python attention_ess.py MODEL"""
import sys
import torch
from turboboa_export.calibration import calibration_batch
from turboboa_export.models import load_model, materialize_builtin

name = sys.argv[1]
model, tok = load_model(str(materialize_builtin(name)))
model.config._attn_implementation = "eager"
ids, _ = calibration_batch(tok, "exl2-c4", 4, 512, 0)
with torch.no_grad():
    out = model(ids, output_attentions=True)
print(f"{name}: per layer, mean over heads and windows: ESS/L of attention received, share on position 0")
for i, a in enumerate(out.attentions):  # [batch, heads, L, L]
    w = a.double().sum(-2)  # attention received per key token [b, h, L]
    ess = w.sum(-1) ** 2 / (w ** 2).sum(-1) / w.shape[-1]
    sink = w[..., 0] / w.sum(-1)
    print(f"layer {i:2d}: ESS/L {ess.mean():.4f} (min head {ess.mean(0).min():.4f})  pos0 share {sink.mean():.3f}")
