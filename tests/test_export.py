import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from turboboa_export.export.compressed_tensors import check_vllm_support
from turboboa_export.export.pack import pack_rows, unpack_rows
from turboboa_export.pipeline.rundir import load_fake_quant_model, load_run

from .cli_checks import cli
from .reference import reference_model


def bitwise_pack_reference(values, bits):
    """Word j bit t = stream bit 32 j + t; value i bit s = stream bit i*bits + s. Plain Python."""
    rows, k = values.shape
    words = -(-k * bits // 32)
    out = []
    for r in range(rows):
        stream = []
        for i in range(k):
            v = int(values[r, i])
            stream += [(v >> s) & 1 for s in range(bits)]
        stream += [0] * (words * 32 - len(stream))
        row = []
        for j in range(words):
            u = sum(stream[32 * j + t] << t for t in range(32))
            row.append(u - 2**32 if u >= 2**31 else u)
        out.append(row)
    return torch.tensor(out, dtype=torch.int32)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("k", [64, 96, 40])
def test_pack_equals_compressed_tensors(bits, k):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    g = torch.Generator().manual_seed(bits * k)
    codes = torch.randint(0, 2**bits, (7, k), generator=g)
    ours = pack_rows(codes, bits)
    theirs = pack_to_int32((codes - 2 ** (bits - 1)).to(torch.int8), bits)
    assert torch.equal(ours, theirs)
    assert torch.equal(unpack_rows(ours, bits, k), codes)
    # along N (zero points): compressed-tensors' packed_dim=0
    zeros = torch.randint(0, 2**bits, (k, 3), generator=g)
    assert torch.equal(pack_rows(zeros.T, bits).T, pack_to_int32((zeros - 2 ** (bits - 1)).to(torch.int8), bits, packed_dim=0))


@pytest.mark.parametrize("k", [32, 40, 11])
def test_pack_3bit_dense_layout(k):
    g = torch.Generator().manual_seed(k)
    codes = torch.randint(0, 8, (5, k), generator=g)
    packed = pack_rows(codes, 3)
    assert packed.shape == (5, -(-k * 3 // 32))
    assert torch.equal(packed, bitwise_pack_reference(codes, 3))
    assert torch.equal(unpack_rows(packed, 3, k), codes)


@pytest.fixture(scope="module")
def runs(tiny_models, calib_text, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, extra in {"sym-g32": ["--sym", "--group-size", 32], "asym-ch": [], "asym-ch-w8": ["--bits", 8],
                        "sym-w3-act": ["--bits", 3, "--sym", "--group-size", 32, "--act-order"],
                        "asym-w2": ["--bits", 2]}.items():
        args = ["quantize", tiny_models["llama"], "--dataset", calib_text, "--nsamples", 4, "--seqlen", 48,
                "--quiet", "--method", "gptq", "-o", root / name]
        if "--bits" not in extra:
            args += ["--bits", 4]
        res = cli(*args, *extra)
        assert res.exit_code == 0, res.output
        out[name] = root / name
    return out


@pytest.mark.parametrize("name", ["sym-g32", "asym-ch", "asym-ch-w8", "sym-w3-act"])
def test_export_decompresses_to_our_weights_and_logits(runs, tmp_path, name):
    out = tmp_path / "export"
    res = cli("export", runs[name], "-o", out)
    assert res.exit_code == 0, res.output
    assert cli("verify", out).exit_code == 0
    ref = reference_model(runs[name])
    _, weights = load_run(runs[name])
    bits = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"]
    if "asym" in name or bits == 3:
        # transformers sizes zero points unpacked ([N, groups]) and so cannot load vLLM's packed ones, and
        # compressed-tensors 0.17 reads 3-bit in a sparse layout, not the dense one vLLM 0.25 allocates: unpack
        # with compressed-tensors' own unpacker (our bit-exact one for 3-bit)
        from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

        tensors = load_file(out / "model.safetensors")
        for lname in weights:
            n, k = tensors[f"{lname}.weight_shape"].tolist()
            packed = tensors[f"{lname}.weight_packed"]
            q = (unpack_rows(packed, 3, k) - 4 if bits == 3 else unpack_from_int32(packed, bits, torch.Size([n, k]))).float()
            zp_key = f"{lname}.weight_zero_point"
            zp = unpack_from_int32(tensors[zp_key], bits, torch.Size([n, 1]), packed_dim=0).float() if zp_key in tensors else 0.0
            scale = tensors[f"{lname}.weight_scale"].float()
            g = tensors.get(f"{lname}.weight_g_idx", torch.arange(k) // (k // scale.shape[1])).long()
            got = (q - zp) * scale[:, g]
            assert torch.equal(got.half(), ref.get_submodule(lname).weight.half()), lname
        return
    assert_transformers_loads_our_model(out, ref, weights)


def assert_transformers_loads_our_model(out, ref, weights):
    """transformers decompresses the export to our (fp16-rounded) weights, and runs it, compressed or not, to our
    logits."""
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    decompressed = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32,
                                                        quantization_config=CompressedTensorsConfig(dequantize=True))
    for lname in weights:
        got = decompressed.get_submodule(lname).weight
        assert torch.equal(got.half(), ref.get_submodule(lname).weight.half()), lname
    ids = torch.tensor([[1, 7, 30, 12, 99, 4]])
    with torch.no_grad():
        a, b = decompressed(input_ids=ids).logits, ref(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-3, rtol=1e-3)
    # compressed (as transformers runs it by default) gives the same logits
    compressed = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(compressed(input_ids=ids).logits, b, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("kind", ["mistral", "qwen2"])
def test_export_of_mistral_and_qwen2(tiny_models, calib_text, tmp_path, kind):
    """TurboBoA W4 g32 sym on Mistral and on Qwen2, whose q/k/v biases travel unquantized."""
    run, out = tmp_path / "run", tmp_path / "export"
    res = cli("quantize", tiny_models[kind], "--dataset", calib_text, "--nsamples", 4, "--seqlen", 48, "--quiet",
              "--method", "turboboa", "--bits", 4, "--sym", "--group-size", 32, "-o", run)
    assert res.exit_code == 0, res.output
    res = cli("export", run, "-o", out)
    assert res.exit_code == 0, res.output
    assert cli("verify", out).exit_code == 0
    if kind == "qwen2":
        assert "model.layers.0.self_attn.q_proj.bias" in load_file(out / "model.safetensors")
    assert_transformers_loads_our_model(out, reference_model(run), load_run(run)[1])


def test_verify_catches_a_changed_scale(runs, tmp_path):
    out = tmp_path / "export"
    assert cli("export", runs["asym-ch"], "-o", out).exit_code == 0
    f = out / "model.safetensors"
    tensors = load_file(f)
    key = next(k for k in tensors if k.endswith("weight_scale"))
    tensors[key] = tensors[key] * 1.01
    save_file(tensors, f, metadata={"format": "pt"})
    res = cli("verify", out)
    assert res.exit_code == 1 and "differ" in res.output


def test_unservable_combinations_are_refused(runs, tmp_path):
    res = cli("export", runs["asym-w2"], "-o", tmp_path / "x")
    assert res.exit_code == 2 and "--sym" in res.output and not (tmp_path / "x").exists()
    with pytest.raises(Exception, match="group size 16"):
        check_vllm_support(4, True, 16)


def test_hf_export_is_dense_and_matches(runs, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "hf"
    assert cli("export", runs["asym-w2"], "--format", "hf", "-o", out).exit_code == 0
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    dense = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ref = load_fake_quant_model(runs["asym-w2"])
    ids = torch.tensor([[3, 9, 27]])
    with torch.no_grad():
        assert torch.equal(dense(input_ids=ids).logits, ref(input_ids=ids).logits)


def test_sharded_exports_hold_the_single_file_tensors(runs, tmp_path, monkeypatch):
    """Exports are written shard by shard as tensors stream in: with shards of 40 kB, the vLLM export's shards
    together hold exactly the single-file export's tensors, each named once in the index, and verify; the dense
    export loads in transformers to the run's logits."""
    from transformers import AutoModelForCausalLM

    from turboboa_export.export import compressed_tensors

    whole = tmp_path / "whole"
    assert cli("export", runs["sym-g32"], "-o", whole).exit_code == 0
    monkeypatch.setattr(compressed_tensors, "SHARD_BYTES", 40_000)
    sharded, dense = tmp_path / "sharded", tmp_path / "dense"
    assert cli("export", runs["sym-g32"], "-o", sharded).exit_code == 0
    assert cli("export", runs["asym-ch"], "--format", "hf", "-o", dense).exit_code == 0
    files = sorted(sharded.glob("*.safetensors"))
    assert len(files) > 3 and not (sharded / "model.safetensors").exists()
    weight_map = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    got = {}
    for f in files:
        part = load_file(f)
        assert all(weight_map[k] == f.name for k in part) and not part.keys() & got.keys()
        got.update(part)
    want = load_file(whole / "model.safetensors")
    assert got.keys() == want.keys() == weight_map.keys() and all(torch.equal(got[k], want[k]) for k in want)
    res = cli("verify", sharded)
    assert res.exit_code == 0, res.output
    assert len(list(dense.glob("*.safetensors"))) > 3
    model = AutoModelForCausalLM.from_pretrained(dense, dtype=torch.float32)
    ids = torch.tensor([[3, 9, 27]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, load_fake_quant_model(runs["asym-ch"])(input_ids=ids).logits)
