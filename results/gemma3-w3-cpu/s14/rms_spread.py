"""How much does per-token 1/rms(q_head)^2 reweight H_in of q/k in Gemma-3-270M? (diagnostic, session 14)"""
import torch, sys
from turboboa_export.models import load_model, load_tokenizer, resolve_model
from turboboa_export.calibration import calibration_batch
from turboboa_export.models import materialize_builtin
name = str(materialize_builtin("gemma3-270m"))
model, tok = load_model(name); model = model.float()
ids = calibration_batch(tok, "exl2-c4", 16, 512, 0)
ids = ids if isinstance(ids, torch.Tensor) else ids[0]
cfg = model.config
H, KV, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
caps = {}
def hook(i):
    def f(mod, args, out):
        caps.setdefault(i, []).append((args[0].detach().reshape(-1, args[0].shape[-1]), out.detach().reshape(-1, out.shape[-1])))
    return f
layers = model.model.layers
hs = [l.self_attn.q_proj.register_forward_hook(hook(("q", i))) for i, l in enumerate(layers)]
hs += [l.self_attn.k_proj.register_forward_hook(hook(("k", i))) for i, l in enumerate(layers)]
with torch.no_grad():
    for b in range(ids.shape[0]):
        model(ids[b:b + 1])
for (role, i), lst in sorted(caps.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    x = torch.cat([a for a, _ in lst]).double(); y = torch.cat([o for _, o in lst]).double()
    heads = H if role == "q" else KV
    rms2 = y.view(-1, heads, D).pow(2).mean(-1)  # [T, heads]
    w = (1 / rms2).mean(1)
    cv = (w.std() / w.mean()).item()
    h0 = x.T @ x; h1 = (x * w[:, None]).T @ x
    h0 /= h0.diagonal().mean(); h1 /= h1.diagonal().mean()
    rel = ((h1 - h0).norm() / h0.norm()).item()
    top = (w / w.sum()).max().item(); topx = ((x.pow(2).sum(1)) / x.pow(2).sum()).max().item()
    print(f"layer {i:2d} {role}: 1/rms^2 cv {cv:.2f} max/min {(w.max()/w.min()).item():8.1f}  "
          f"rel change of trace-normalised H_in {rel:.3f}  largest token share: plain {topx:.3f} weighted {top:.3f}")
