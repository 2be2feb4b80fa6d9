"""The online Hadamard on down_proj's input, full (H_n = (H_m kron S_p) / sqrt(n)) or block-diagonal
(I kron S_B / sqrt(B)): against matrices built entry by entry from their definitions, in the rotated model, and as
the export writes it (no stored matrices; stock ``hadamard`` transforms where vLLM has them)."""

import json
import math

import pytest
import torch

from turboboa_export.arch import spec_for
from turboboa_export.errors import TbqError
from turboboa_export.rotation.fuse import rotate_model
from turboboa_export.rotation.hadamard import (apply_online_rotation, base_matrix, factor, kron_transform,
                                               parse_online_rotation)
from turboboa_export.rotation.online import install_transforms
from turboboa_export.rotation.paley import DATA

from .test_rotation import tiny_model


def shipped_base(m: int) -> torch.Tensor:
    """H_m read from the shipped text file (or, for products, the Kronecker product of two), float64 +-1."""
    path = DATA / f"had{m}.txt"
    if path.is_file():
        return torch.tensor([[1.0 if c == "+" else -1.0 for c in row] for row in path.read_text().split()],
                            dtype=torch.float64)
    a = next(a for a in range(2, m) if m % a == 0 and (DATA / f"had{a}.txt").is_file()
             and (DATA / f"had{m // a}.txt").is_file())
    return torch.kron(shipped_base(a), shipped_base(m // a))


def parity(v: torch.Tensor) -> torch.Tensor:
    """(-1)^popcount(v), elementwise on non-negative int64."""
    odd = torch.zeros_like(v)
    while bool(v.any()):
        odd ^= v & 1
        v = v >> 1
    return 1.0 - 2.0 * odd.double()


def full_entries(n: int, m: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """H_n[i, j] = H_m[i // p, j // p] (-1)^popcount((i % p) & (j % p)) / sqrt(n), p = n / m."""
    p = n // m
    base = shipped_base(m) if m > 1 else torch.ones(1, 1, dtype=torch.float64)
    return base[rows // p, cols // p] * parity((rows % p) & (cols % p)) / math.sqrt(n)


def block_entries(b: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(I kron S_B)[i, j] / sqrt(B) = [i // B == j // B] (-1)^popcount((i % B) & (j % B)) / sqrt(B)."""
    return (rows // b == cols // b).double() * parity((rows % b) & (cols % b)) / math.sqrt(b)


def explicit_columns(n: int, seed: int) -> torch.Tensor:
    """All columns for n <= 2048, else 96 random ones (a whole 14336^2 float64 matrix is 1.6 GB)."""
    return torch.arange(n) if n <= 2048 else torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:96]


def explicit_product(x: torch.Tensor, entries, cols: torch.Tensor) -> torch.Tensor:
    """(x @ H)[:, cols] for H given entry by entry."""
    return x @ entries(torch.arange(x.shape[-1])[:, None], cols[None, :])


@pytest.mark.parametrize("n", [576, 1536, 11008, 14336])
def test_full_transform_equals_explicit_matrix(n):
    m = factor(n)[0]
    x = torch.randn(3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    cols = explicit_columns(n, n)
    want = explicit_product(x, lambda r, c: full_entries(n, m, r, c), cols)
    got = apply_online_rotation(x, None)
    # what the vLLM plugin runs: the [m, m] base passed in, the Sylvester part by any normalized op
    plugin = kron_transform(x, base_matrix(m).T.contiguous(), lambda y: apply_online_rotation(y, y.shape[-1]))[:, cols]
    assert torch.allclose(got[:, cols], want, rtol=0, atol=1e-11)
    assert torch.allclose(plugin, want, rtol=0, atol=1e-11)
    assert torch.allclose(got.norm(dim=-1), x.norm(dim=-1), rtol=1e-12)


@pytest.mark.parametrize("n,b", [(1536, 64), (1536, 512), (14336, 128), (11008, 32), (512, 512)])
def test_block_transform_equals_explicit_matrix(n, b):
    x = torch.randn(3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n + b))
    cols = explicit_columns(n, b)
    want = explicit_product(x, lambda r, c: block_entries(b, r, c), cols)
    assert torch.allclose(apply_online_rotation(x, b)[:, cols], want, rtol=0, atol=1e-11)
    if b < n:  # the check can fail: a block transform is not the full one
        assert not torch.allclose(apply_online_rotation(x, None)[:, cols], want, atol=1e-3)


def test_online_rotation_settings():
    assert parse_online_rotation("full") is None and parse_online_rotation("block:128") == 128
    for bad in ("block:96", "block:1", "block:", "blocks:64", "half"):
        with pytest.raises(ValueError, match="'full' or 'block:B'"):
            parse_online_rotation(bad)
    from turboboa_export.config import build_config

    with pytest.raises(TbqError, match="online_rotation.*power of two"):
        build_config("m", transform={"rotate": "hadamard", "online_rotation": "block:96"})
    with pytest.raises(TbqError, match="needs --rotate hadamard"):
        build_config("m", transform={"online_rotation": "block:64"})


@pytest.mark.parametrize("kind,over,block", [("llama", {"intermediate_size": 96}, None),
                                             ("llama", {"intermediate_size": 96}, 32),
                                             ("llama", {"intermediate_size": 148}, 4),  # 37 * 4: no full H_148
                                             ("llama", {}, 16),
                                             ("qwen3", {"intermediate_size": 160}, 32)])
def test_rotation_preserves_logits_under_each_form(kind, over, block):
    model = tiny_model(kind, **over)
    ids = torch.randint(0, 160, (2, 24), generator=torch.Generator().manual_seed(2))
    spec = spec_for(model.config)
    with torch.no_grad():
        want = model(input_ids=ids).logits
        rotate_model(model, spec, seed=3, online_block=block)
        install_transforms(model, spec, rotated=True, act_bits=None, online_block=block)
        got = model(input_ids=ids).logits
    assert float((got - want).abs().max() / want.abs().max()) < 1e-4
    # the check can fail: the online transform of the other form does not undo this one
    other = 8 if block is None else block // 2
    for layer in model.model.layers:
        down = layer.mlp.down_proj
        down._forward_pre_hooks.clear()
        down.register_forward_pre_hook(lambda _m, a: (apply_online_rotation(a[0], other),))
    with torch.no_grad():
        assert float((model(input_ids=ids).logits - want).abs().max() / want.abs().max()) > 1e-3


def test_block_size_must_divide_the_intermediate_size():
    model = tiny_model("llama", intermediate_size=96)
    with pytest.raises(TbqError, match="block:64 needs a block size dividing the intermediate size 96.*block:32"):
        rotate_model(model, spec_for(model.config), seed=0, online_block=64)
    # an intermediate size with no shipped Hadamard order (148 = 37 * 4, like Qwen2.5-7B's 18944 = 37 * 512) is
    # refused for the full transform only, naming block:B
    model = tiny_model("llama", intermediate_size=148)
    with pytest.raises(TbqError, match="intermediate size 148.*block:B"):
        rotate_model(model, spec_for(model.config), seed=0, online_block=None)


def tensor_bytes(folder) -> dict[str, int]:
    from safetensors import safe_open

    sizes = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            for k in st.keys():
                t = st.get_tensor(k)
                sizes[k] = t.numel() * t.element_size()
    return sizes


@pytest.mark.parametrize("inter,online,want_type,want_head,want_method", [
    (96, "full", "tbq-hadamard", None, "tbq"),  # 96 = 12 * 8: tbq's plugin
    (96, "block:32", "hadamard", 32, "tbq"),  # stock Hadacore is wrong below 512: the plugin's GEMM
    (128, "full", "hadamard", None, "tbq"),
    (1536, "block:512", "hadamard", 512, "compressed-tensors"),  # stock vLLM's Hadacore
    (1024, "full", "hadamard", None, "compressed-tensors"),  # a power of two: one stock Sylvester block
])
def test_rotated_export_stores_no_matrix(tmp_path, calib_text, inter, online, want_type, want_head, want_method):
    """The rotated export holds exactly the unrotated export's tensors (the same names and bytes: no n x n matrix,
    and every base here is derived), and a transform_config vLLM's compressed-tensors parses."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from turboboa_export.config import build_config
    from turboboa_export.export.compressed_tensors import export_vllm
    from turboboa_export.export.verify import verify_export
    from turboboa_export.pipeline.sequential import quantize_model

    from .tiny import make_model_dir

    src = make_model_dir(tmp_path, "llama")
    model = AutoModelForCausalLM.from_pretrained(src)
    model.config.intermediate_size = inter
    model = AutoModelForCausalLM.from_config(model.config)
    model.save_pretrained(tmp_path / "m")
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp_path / "m")
    sizes = {}
    for name, t in (("plain", {}), ("rot", {"rotate": "hadamard", "online_rotation": online})):
        cfg = build_config(str(tmp_path / "m"), quant={"method": "rtn", "bits": 4, "sym": True, "group_size": 32},
                           calib={"dataset": str(calib_text), "nsamples": 2, "seqlen": 32}, transform=t)
        run = quantize_model(cfg, tmp_path / f"run-{name}", progress=False)
        out = export_vllm(run, tmp_path / f"export-{name}")
        assert verify_export(out) == []
        sizes[name] = tensor_bytes(out)
    assert sizes["rot"] == sizes["plain"]
    from compressed_tensors.transform import TransformConfig

    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    scheme = TransformConfig.model_validate(qc["transform_config"]).config_groups["tbq_down_hadamard"]
    assert (scheme.type, scheme.head_dim, qc["quant_method"]) == (want_type, want_head, want_method)
    assert scheme.apply[0].location == "input" and scheme.apply[0].targets == ["re:.*mlp.down_proj$"]


def test_plugin_plans_each_transform_per_rank():
    """What the vLLM plugin applies on each rank: blocks when B divides the rank's share, a one-line refusal naming
    --online-rotation block:B for a full transform of a split input, the full H_n on an unsplit one."""
    from turboboa_export.vllm_plugin import derived_plan

    assert derived_plan("hadamard", 512, 7168, 14336, 2) == 512  # Llama-3-8B down_proj at TP=2
    assert derived_plan("hadamard", None, 4096, 4096, 1) == 4096  # a power of two: one Sylvester block
    assert derived_plan("tbq-hadamard", None, 14336, 14336, 1) is None  # the full 28 * 512 transform
    with pytest.raises(ValueError, match="--online-rotation block:B"):
        derived_plan("tbq-hadamard", None, 7168, 14336, 2)
    with pytest.raises(ValueError, match="blocks of 1024 do not divide each rank's 3584"):
        derived_plan("hadamard", 1024, 3584, 14336, 4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,block", [(14336, None), (1536, None), (14336, 512), (11008, 32), (4096, 128)])
@pytest.mark.parametrize("rows", [1, 38, 12729])
def test_plugin_transform_on_cuda_matches_float64(n, block, dtype, rows):
    """The plugin's CUDA path (vLLM's Hadacore for Sylvester parts of 512 and more, one GEMM below, the [m, m]
    product by tbq's Triton mix) against the float64 transform of the same half-precision inputs, at token counts
    where vLLM 0.25.1's Hadacore fails for small sizes (38 x 128, 12729 x 256); needs vLLM (skips where it is not
    installed)."""
    pytest.importorskip("vllm")
    from turboboa_export.vllm_classes import full_transform, sylvester_gemm_matrix, sylvester_op

    x = torch.randn(rows, n, generator=torch.Generator().manual_seed(n + rows)).to(dtype)
    want = apply_online_rotation(x.double(), block)
    xc = x.cuda()
    m = 1 if block is not None else factor(n)[0]
    op = sylvester_op(sylvester_gemm_matrix(block or n // m, xc.device, dtype))
    if block is None:
        got = full_transform(xc, base_matrix(m).T.to(xc).contiguous(), op)
    else:
        got = apply_online_rotation(xc, block, op)
    err = float((got.double().cpu() - want).abs().max() / want.abs().max())
    assert err < (1e-2 if dtype == torch.bfloat16 else 2e-3), err
    assert not torch.isnan(got).any()
