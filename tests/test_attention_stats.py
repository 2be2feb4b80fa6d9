import pytest
import torch

from turboboa_export.arch import attention_shape, spec_for
from turboboa_export.pipeline.attention_stats import AttentionStatistics
from turboboa_export.pipeline.capture import capture_inputs


def setup(path, seqlen=12, nsamples=2):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64, attn_implementation="eager").eval()
    spec = spec_for(model.config)
    layers = model.get_submodule(spec.layers)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (nsamples, seqlen), generator=g)
    with torch.no_grad():
        cap = capture_inputs(model, layers, ids)
    return model, spec, layers, cap


def rope_matrix(cos, sin):
    """R with R x = x cos + rotate_half(x) sin, built entry by entry."""
    d = cos.shape[0]
    r = torch.zeros(d, d, dtype=cos.dtype)
    half = d // 2
    for i in range(d):
        r[i, i] = cos[i]
        if i < half:
            r[i, i + half] = -sin[i]  # rotate_half(x)_i = -x_{i+half}
        else:
            r[i, i - half] = sin[i]  # rotate_half(x)_i = x_{i-half}
    return r


def rms(v, norm):
    if norm is None:
        return v
    w = norm.weight
    gain = (1 + w) if "Gemma" in type(norm).__name__ else w
    eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon")
    return gain * v / torch.sqrt((v * v).mean() + eps)


def gain_of(norm, d):
    if norm is None:
        return torch.ones(d, dtype=torch.float64)
    return rms(torch.ones(d, dtype=torch.float64), norm)


@pytest.mark.parametrize("route", ["z", "gram"])
@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "gemma3"])
def test_statistics_equal_brute_force_definitions(tiny_models, kind, route):
    model, spec, layers, cap = setup(tiny_models[kind])
    li = 0
    block = layers[li]
    attn = block.get_submodule(spec.attn)
    with torch.no_grad():  # random q/k norm gains (a fresh model's are all 1, under which G could be left out)
        for path in (spec.q_norm, spec.k_norm):
            if path:
                norm = block.get_submodule(path)
                norm.weight.copy_(torch.rand(norm.weight.shape, generator=torch.Generator().manual_seed(2)) + 0.5)
    shape = attention_shape(model.config)
    kwargs = cap.kwargs[li]
    ln = block.get_submodule(spec.input_norm)
    g = torch.Generator().manual_seed(1)
    xs_q = [ln(x).detach() for x in cap.inputs]
    xs_fp = [x + 0.05 * torch.randn(x.shape, generator=g, dtype=x.dtype) for x in xs_q]
    stats = AttentionStatistics(attn, spec, shape, with_r=True, dtype=torch.float64, route=route)
    centred = AttentionStatistics(attn, spec, shape, with_r=True, dtype=torch.float64, route=route, centred_keys=True)
    with torch.no_grad():
        for xq, xf in zip(xs_q, xs_fp):
            stats.add(xq, xf, kwargs)
            centred.add(xq, xf, kwargs)

    H, KV, D = shape.heads, shape.kv_heads, shape.head_dim
    grp = H // KV
    wq, wk = attn.q_proj.weight.detach(), attn.k_proj.weight.detach()
    bq, bk = (torch.zeros(len(m.weight), dtype=torch.float64) if m.bias is None else m.bias.detach()
              for m in (attn.q_proj, attn.k_proj))
    qn = attn.q_norm if spec.q_norm else None
    kn = attn.k_norm if spec.k_norm else None
    cos, sin = (t[0] for t in kwargs["position_embeddings"])
    L = cos.shape[0]
    window = getattr(attn, "sliding_window", None)

    def heads_at(x):
        """post-norm, post-RoPE q [H][t] and k [KV][t] by explicit loops."""
        pq, pk = [wq @ x[t] + bq for t in range(L)], [wk @ x[t] + bk for t in range(L)]  # projections, biases added
        q = [[rope_matrix(cos[t], sin[t]) @ rms(pq[t][h * D:(h + 1) * D], qn) for t in range(L)] for h in range(H)]
        k = [[rope_matrix(cos[t], sin[t]) @ rms(pk[t][h * D:(h + 1) * D], kn) for t in range(L)] for h in range(KV)]
        return q, k

    def z_of(x):
        """q, k, Z_h = A_h X, and per query head sum_i Var_{a_i}(k): the keys' spread about query i's attended mean."""
        q, k = heads_at(x)
        z, spread = [], []
        for h in range(H):
            zh = torch.zeros(L, x.shape[1], dtype=torch.float64)
            vh = torch.zeros(D, D, dtype=torch.float64)
            for i in range(L):
                js = [j for j in range(i + 1) if window is None or i - j < window]
                s = torch.stack([attn.scaling * q[h][i] @ k[h // grp][j] for j in js])
                a = torch.softmax(s, 0)
                zh[i] = sum(a[n] * x[j] for n, j in enumerate(js))
                kbar = sum(a[n] * k[h // grp][j] for n, j in enumerate(js))
                vh += sum(a[n] * torch.outer(k[h // grp][j] - kbar, k[h // grp][j] - kbar) for n, j in enumerate(js))
            z.append(zh)
            spread.append(vh)
        return q, k, z, spread

    T = L * len(xs_q)
    c_q = torch.zeros(H, D, D, dtype=torch.float64)
    c_k = torch.zeros(KV, D, D, dtype=torch.float64)
    h_v = torch.zeros(KV, xs_q[0].shape[1], xs_q[0].shape[1], dtype=torch.float64)
    r_v = torch.zeros_like(h_v)
    c_kc = torch.zeros(H, D, D, dtype=torch.float64)  # attention-centred key covariance per query head
    for xq, xf in zip(xs_q, xs_fp):
        q, k, zq, spread = z_of(xq)
        _, _, zf, _ = z_of(xf)
        c_kc += torch.stack(spread) * 2 / T
        for t in range(L):
            for h in range(H):
                c_q[h] += torch.outer(q[h][t], q[h][t]) * 2 / T
                h_v[h // grp] += torch.outer(zq[h][t], zq[h][t]) * 2 / T / grp
                r_v[h // grp] += torch.outer(zf[h][t] - zq[h][t], zq[h][t]) * 2 / T / grp
            for h in range(KV):
                c_k[h] += torch.outer(k[h][t], k[h][t]) * 2 / T
    Rl = [rope_matrix(cos[t], sin[t]) for t in range(L)]
    gq, gk = torch.diag(gain_of(qn, D)), torch.diag(gain_of(kn, D))
    hq = torch.stack([sum((R @ gq).T @ c_k[h // grp] @ (R @ gq) for R in Rl) / L for h in range(H)])
    ck_q = torch.stack([c_q[g * grp:(g + 1) * grp].mean(0) for g in range(KV)])
    hk = torch.stack([sum((R @ gk).T @ ck_q[g] @ (R @ gk) for R in Rl) / L for g in range(KV)])
    # transformers' RMS norms compute in float32 internally, so q/k-norm models agree to float32 precision
    tol = dict(rtol=1e-5, atol=1e-6) if qn is not None else dict(rtol=1e-9, atol=1e-10)
    hq_c = torch.stack([sum((R @ gq).T @ c_kc[h] @ (R @ gq) for R in Rl) / L for h in range(H)])
    for got, want in ((stats.h_out_q(), hq), (stats.h_out_k(), hk), (stats.h_in_v(), h_v), (stats.r_v(), r_v),
                      (centred.h_out_q(), hq_c), (centred.h_out_k(), hk), (centred.h_in_v(), h_v)):
        assert torch.allclose(got, want, **tol), float((got - want).abs().max())


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "qwen3", "gemma3"])
def test_attention_probabilities_reproduce_the_module_output(tiny_models, kind):
    model, spec, layers, cap = setup(tiny_models[kind], seqlen=40)
    shape = attention_shape(model.config)
    for li, block in enumerate(layers):
        attn = block.get_submodule(spec.attn)
        x = block.get_submodule(spec.input_norm)(cap.inputs[0]).detach()
        stats = AttentionStatistics(attn, spec, shape, with_r=False, dtype=torch.float64)
        with torch.no_grad():
            _, _, _, z = stats.weighted_inputs(x, cap.kwargs[li])
            heads = torch.einsum("hli,hdi->lhd", z, attn.v_proj.weight.reshape(shape.kv_heads, shape.head_dim, -1)
                                 .repeat_interleave(shape.group, 0))
            if attn.v_proj.bias is not None:  # each probability row sums to 1: A (X W^T + b) = Z W^T + b
                bias = attn.v_proj.bias.reshape(shape.kv_heads, -1).repeat_interleave(shape.group, 0)  # [heads, d]
                heads = heads + bias
            ours = attn.o_proj(heads.reshape(x.shape[0], -1))
            theirs = attn(x[None], **{k: v for k, v in cap.kwargs[li].items() if k != "position_ids"})[0][0]
        # eager attention takes its softmax in float32
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6), (kind, li, float((ours - theirs).abs().max()))



@pytest.mark.parametrize("method", ["boa", "turboboa"])
def test_centred_keys_setting_reaches_the_statistics(tiny_models, method):
    """``--centred-keys`` (QuantConfig.centred_keys) builds the block's attention statistics with the centred H_out,q:
    catches the setting parsed but never handed to AttentionStatistics."""
    from turboboa_export.config import QuantConfig
    from turboboa_export.methods import get_method

    model, spec, layers, _ = setup(tiny_models["llama"])
    shape = attention_shape(model.config)
    for flag in (False, True):
        make = get_method(method).attention_statistics(QuantConfig(method=method, centred_keys=flag), spec, shape)
        assert make(layers[0]).centred_keys is flag
