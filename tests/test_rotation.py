"""Rotation (QuaRot recipe): Hadamard matrices, function-preserving weight rotation, online transforms,
activation fake-quantization."""

import json
import math
import sys

import pytest
import torch

from turboboa_export.arch import spec_for
from turboboa_export.errors import TbqError
from turboboa_export.rotation.hadamard import (apply_hadamard, base_orders, factor, hadamard_matrix, random_hadamard,
                                               sylvester)
from turboboa_export.rotation.fuse import rotate_model
from turboboa_export.rotation.online import install_transforms, quantize_activations
from turboboa_export.rotation.paley import DATA, paley_hadamard

from .tiny import tiny_config

SIZES = [1, 2, 16, 64, 12, 48, 96, 576, 1536, 20 * 8, 28 * 64, 44 * 2]


@pytest.mark.parametrize("m", [12, 20, 28, 44, 344])
def test_shipped_bases_are_hadamard_and_paley(m):
    text = (DATA / f"had{m}.txt").read_text().split()
    h = torch.tensor([[1.0 if c == "+" else -1.0 for c in row] for row in text], dtype=torch.float64)
    assert torch.equal(h @ h.T, m * torch.eye(m, dtype=torch.float64))
    assert torch.equal(h, paley_hadamard(m - 1).double())


@pytest.mark.parametrize("n", SIZES)
def test_hadamard_orthonormal_and_fast_transform_equals_matrix(n):
    h = hadamard_matrix(n)
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.allclose(h.abs(), torch.full_like(h, n ** -0.5), rtol=0, atol=1e-15)  # entries +-1/sqrt(n)
    q = random_hadamard(n, seed=n)
    assert torch.allclose(q @ q.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)
    x = torch.randn(3, 4, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    want = torch.einsum("...i,ij->...j", x, h)  # explicit product, element by element
    assert torch.allclose(apply_hadamard(x), want, rtol=0, atol=1e-12)


def test_unsupported_size_is_a_clear_error():
    with pytest.raises(TbqError, match="no Hadamard matrix of order 18944"):
        factor(18944)  # Qwen2.5-7B's intermediate size, 37 * 2^9: no shipped base
    assert 12 in base_orders() and 144 in base_orders()
    assert factor(14336) == (28, 512) and factor(1536) == (12, 128) and factor(576) == (144, 4)
    assert factor(11008) == (344, 32)


def test_llama2_down_hadamard_columns_match_their_definition():
    """Llama-2's 11008 = 344 * 2^5: the fast transform against columns of (H_344 kron S_32) / sqrt(n) built entry by
    entry (the whole float64 matrix would take 1 GB)."""
    n, m, p = 11008, 344, 32
    g = torch.Generator().manual_seed(11)
    cols = torch.randperm(n, generator=g)[:48]
    base, syl = hadamard_matrix(m) * m**0.5, sylvester(p)
    rows = torch.arange(n)
    h_cols = base[rows[:, None] // p, cols[None, :] // p] * syl[rows[:, None] % p, cols[None, :] % p] / n**0.5
    assert torch.allclose(h_cols.T @ h_cols, torch.eye(len(cols), dtype=torch.float64), rtol=0, atol=1e-12)
    x = torch.randn(5, n, dtype=torch.float64, generator=g)
    assert torch.allclose(apply_hadamard(x)[:, cols], x @ h_cols, rtol=0, atol=1e-10)


def tiny_model(kind, **over):
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(kind, 160)
    for k, v in over.items():
        setattr(cfg, k, v)
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float64).eval()
    with torch.no_grad():  # non-trivial norm weights and biases, so that fusing them is tested
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("kind,over", [("llama", {}), ("qwen3", {}), ("mistral", {}),
                                       ("qwen2", {}),  # q/k/v biases
                                       ("llama", {"intermediate_size": 96}),
                                       ("llama", {"intermediate_size": 688}),  # 344 * 2: Llama-2's base
                                       ("qwen3", {"hidden_size": 48, "intermediate_size": 160})])
def test_rotation_preserves_logits(kind, over):
    model = tiny_model(kind, **over)
    ids = torch.randint(0, 160, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        spec = spec_for(model.config)
        rotate_model(model, spec, seed=3)
        install_transforms(model, spec, rotated=True, act_bits=None)
        got = model(input_ids=ids).logits
    # float64 model, but transformers' RMSNorm computes in float32: agreement to ~1e-7, not 1e-15
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5
    assert not model.config.tie_word_embeddings
    norm = model.get_submodule("model.layers.0.input_layernorm").weight
    assert torch.equal(norm, torch.ones_like(norm))
    # the check can fail: without the online Hadamard on down_proj's input the logits change
    for h in list(model.get_submodule("model.layers.0.mlp.down_proj")._forward_pre_hooks):
        del model.get_submodule("model.layers.0.mlp.down_proj")._forward_pre_hooks[h]
    with torch.no_grad():
        assert float((model(input_ids=ids).logits - want).abs().max() / want.abs().max()) > 1e-3


def test_gemma3_rotation_is_refused():
    model = tiny_model("gemma3")
    with pytest.raises(TbqError, match="supports llama"):
        rotate_model(model, spec_for(model.config), seed=0)


@pytest.mark.parametrize("bits,clip", [(4, 1.0), (4, 0.9), (8, 0.95)])
def test_activation_quantization_matches_float64_reference(bits, clip):
    x = torch.randn(7, 33, dtype=torch.float64, generator=torch.Generator().manual_seed(bits))
    x[3] = 0  # a zero token stays zero
    got = quantize_activations(x, bits, clip)
    qmax = 2 ** (bits - 1) - 1
    for t in range(7):
        s = clip * max(abs(float(v)) for v in x[t]) / qmax
        for j in range(33):
            v = float(x[t, j])
            want = 0.0 if s == 0 else min(max(round(v / s), -qmax - 1), qmax) * s
            assert abs(float(got[t, j]) - want) < 1e-12
    assert len(torch.unique(got[0])) <= 2**bits


def test_rotated_run_end_to_end(tiny_models, calib_text, tmp_path):
    """A rotated W8 run evaluates like the original model (the online Hadamard is restored on load), W4A4 runs
    complete, and exporting a rotated run is refused in one line."""
    from typer.testing import CliRunner

    from tbq_cli.main import app
    from tbq_eval.ppl import eval_windows, load_for_eval, perplexity

    runner = CliRunner()
    common = ["quantize", str(tiny_models["llama"]), "--dataset", str(calib_text), "--nsamples", "4", "--seqlen", "48",
              "--quiet", "--method", "turboboa", "--rotate", "hadamard"]
    res = runner.invoke(app, common + ["--bits", "8", "-o", str(tmp_path / "w8")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, common + ["--bits", "4", "--sym", "--act-bits", "4", "-o", str(tmp_path / "w4a4")])
    assert res.exit_code == 0, res.output
    fp, tok = load_for_eval(str(tiny_models["llama"]))
    ws = eval_windows(tok, str(calib_text), 40, 3)
    cpu = torch.device("cpu")
    base = perplexity(fp, ws, cpu, progress=False)
    w8 = perplexity(load_for_eval(str(tmp_path / "w8"))[0], ws, cpu, progress=False)
    assert abs(w8 / base - 1) < 0.01, (w8, base)
    w4a4_model = load_for_eval(str(tmp_path / "w4a4"))[0]
    assert math.isfinite(perplexity(w4a4_model, ws, cpu, progress=False))
    down = w4a4_model.get_submodule("model.layers.0.mlp.down_proj")
    assert len(down._forward_pre_hooks) == 2  # online Hadamard, then activation quantization
    x = torch.randn(5, down.in_features, generator=torch.Generator().manual_seed(0))
    hooked = down(x)
    with torch.no_grad():
        plain = torch.nn.functional.linear(x @ hadamard_matrix(down.in_features).float(), down.weight)
    assert not torch.allclose(hooked, plain, atol=1e-4)  # the activations are quantized ...
    assert torch.allclose(hooked, plain, rtol=0.3, atol=0.3)  # ... after the same Hadamard
    res = runner.invoke(app, ["export", str(tmp_path / "w8"), "--format", "hf", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "rotated" in res.output and "Traceback" not in res.output
    # the W4A4 export: compressed-tensors parses its config; it is tbq's plugin's (quant_method tbq, with the clip
    # ratio), and tbq's vLLM paths refuse it in one line when the vLLM Python lacks the plugin
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.transform import TransformConfig

    from tbq_eval import ppl as ppl_mod
    from turboboa_export.export.compressed_tensors import export_vllm

    out = export_vllm(tmp_path / "w4a4", tmp_path / "w4a4-export")
    raw = json.loads((out / "config.json").read_text())["quantization_config"]
    parsed = QuantizationConfig.model_validate(raw)
    acts = parsed.config_groups["group_0"].input_activations
    assert (acts.num_bits, acts.strategy, acts.dynamic, acts.symmetric) == (4, "token", True, True)
    assert raw["quant_method"] == "tbq" and raw["tbq"] == {"act_clip": 0.9}
    assert TransformConfig.model_validate(raw["transform_config"]).config_groups["tbq_down_hadamard"].apply[0].location == "input"
    no_plugin = tmp_path / "no-plugin-python"  # a Python without tbq's entry point
    no_plugin.write_text(f"#!/bin/sh\nexec {sys.executable} -I -S \"$@\"\n")
    no_plugin.chmod(0o755)
    with pytest.raises(SystemExit, match="integer activations"):
        ppl_mod.main([str(out), "--backend", "vllm", "--dataset", str(calib_text), "--seqlen", "40",
                      "--vllm-python", str(no_plugin)])


def test_bad_transform_settings_are_clear(tiny_models, tmp_path):
    from typer.testing import CliRunner

    from tbq_cli.main import app

    res = CliRunner().invoke(app, ["quantize", str(tiny_models["llama"]), "--act-bits", "3", "-o", str(tmp_path / "r")])
    assert res.exit_code == 2 and "activation bits must be 4 or 8" in res.output
    res = CliRunner().invoke(app, ["quantize", str(tiny_models["gemma3"]), "--rotate", "hadamard", "--nsamples", "2",
                                   "--seqlen", "32", "--dataset", "exl2-wiki", "-o", str(tmp_path / "g")])
    assert res.exit_code == 2 and "supports llama" in res.output


def test_qk_hadamard_is_exact_and_kv_quantization_is_applied():
    """With KV quantization on a rotated model, the post-RoPE q/k Hadamard leaves the logits unchanged (quantizers
    off); with the quantizers on, the logits move (4-bit keys and values) but stay close."""
    model = tiny_model("qwen3")
    ids = torch.randint(0, 160, (2, 24), generator=torch.Generator().manual_seed(1))
    spec = spec_for(model.config)
    with torch.no_grad():
        want = model(input_ids=ids).logits
        rotate_model(model, spec, seed=5)
        t = install_transforms(model, spec, rotated=True, act_bits=None, kv_bits=4)
        assert model.config._attn_implementation == "tbq_kv" and t.qk_hadamard
        with t.act_quant_off():
            exact = model(input_ids=ids).logits
        quant = model(input_ids=ids).logits
    scale = float(want.abs().max())
    assert float((exact - want).abs().max()) / scale < 1e-5
    assert 1e-3 < float((quant - want).abs().max()) / scale < 0.5


def test_kv_quantized_run_and_its_export_refusal(tiny_models, calib_text, tmp_path):
    from typer.testing import CliRunner

    from tbq_cli.main import app
    from turboboa_export.pipeline.rundir import load_fake_quant_model

    runner = CliRunner()
    res = runner.invoke(app, ["quantize", str(tiny_models["llama"]), "--dataset", str(calib_text), "--nsamples", "4",
                              "--seqlen", "48", "--quiet", "--rotate", "hadamard", "--kv-bits", "4", "--bits", "4",
                              "-o", str(tmp_path / "kv")])
    assert res.exit_code == 0, res.output
    model = load_fake_quant_model(tmp_path / "kv")
    assert model.config._attn_implementation == "tbq_kv"
    assert model.model.layers[0].self_attn.tbq_kv.kv_bits == 4
    res = runner.invoke(app, ["export", str(tmp_path / "kv"), "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "KV cache" in res.output
    res = runner.invoke(app, ["quantize", str(tiny_models["llama"]), "--kv-bits", "5", "-o", str(tmp_path / "r")])
    assert res.exit_code == 2 and "KV-cache bits must be 4 or 8" in res.output
