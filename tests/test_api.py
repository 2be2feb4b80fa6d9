"""The Python API (in-memory and path runs agree bit for bit), what is quantized (--ignore, per-layer rules, the
fused-shard refusal), the export's model card, and run.json's recorded settings (issue 19)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tbq_cli.main import app
from turboboa_export import Run, load_fake_quant_model, quantize
from turboboa_export.algorithms.quantized import QuantizedWeight
from turboboa_export.api import export
from turboboa_export.config import QuantConfig, Rule, build_config
from turboboa_export.errors import TbqError
from turboboa_export.export.compressed_tensors import dequantize_exported
from turboboa_export.export.verify import verify_export
from turboboa_export.methods import used_settings
from turboboa_export.plan import layer_config

from .tiny import make_model_dir, make_tokenizer, tiny_config

FAST = dict(nsamples=2, seqlen=32)
IGNORED = "model.layers.0.mlp.down_proj"
RULE_LAYER = "model.layers.1.self_attn.o_proj"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Llama folder with a model card of its own, which runs and exports must not carry."""
    path = make_model_dir(tmp_path_factory.mktemp("api"), "llama", seed=3)
    (path / "README.md").write_text("SOURCE MODEL CARD\n")
    return path


def in_memory_llama(seed: int):
    """The model make_model_dir(seed) saves, built again in memory (same seed, same random weights)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    tok = make_tokenizer()
    return AutoModelForCausalLM.from_config(tiny_config("llama", len(tok)), dtype=torch.float32), tok


def codes(run: Run) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted((run.path / "blocks").glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_in_memory_model_equals_the_path_run(model_dir, calib_text, tmp_path):
    settings = dict(method="gptq", bits=4, sym=True, group_size=32, dataset=str(calib_text), **FAST)
    by_path = quantize(str(model_dir), output=tmp_path / "path", **settings)
    model, tok = in_memory_llama(3)
    in_memory = quantize(model, output=tmp_path / "memory", tokenizer=tok, **settings)
    a, b = codes(by_path), codes(in_memory)
    assert a.keys() == b.keys() and len(a) == 4 * 21
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    src = in_memory.info["model"]
    assert src["in_memory"] and src["model_type"] == "llama" and src["source"] == "in-memory"
    # the in-memory run saved config and tokenizer: it exports and verifies like any run
    out = export(in_memory, "vllm", tmp_path / "export")
    assert verify_export(out) == []
    assert (in_memory.path / "tokenizer.json").is_file() and (in_memory.path / "config.json").is_file()
    # the source folder's README.md is neither copied into the run nor the export's card
    assert not (by_path.path / "README.md").exists()


def test_in_memory_model_without_tokenizer_is_refused(calib_text, tmp_path):
    model, _ = in_memory_llama(3)
    with pytest.raises(TbqError, match="tokenizer="):
        quantize(model, output=tmp_path / "run", dataset=str(calib_text), **FAST)
    with pytest.raises(TbqError, match="unknown setting 'bitz'"):
        quantize(model, output=tmp_path / "run", tokenizer=make_tokenizer(), bitz=4)


@pytest.fixture(scope="module")
def mixed_run(model_dir, calib_text, tmp_path_factory):
    """GPTQ W4 g32 sym, down_proj of block 0 kept dense, o_proj of block 1 at W8 per channel by a rule."""
    root = tmp_path_factory.mktemp("mixed")
    config = {"rules": [{"pattern": r"re:.*layers\.1\.self_attn\.o_proj$", "bits": 8, "group_size": -1}]}
    return quantize(str(model_dir), config, output=root / "run", method="gptq", bits=4, sym=True, group_size=32,
                    ignore=[IGNORED], dataset=str(calib_text), **FAST)


def test_ignored_layer_stays_dense_and_rule_layer_takes_its_bits(mixed_run, model_dir, tmp_path):
    from compressed_tensors.quantization import QuantizationConfig
    from transformers import AutoModelForCausalLM

    assert IGNORED not in mixed_run.weights and RULE_LAYER in mixed_run.weights
    assert mixed_run.info["dense_linears"] == [IGNORED]
    metrics = [json.loads(l) for l in (mixed_run.path / "metrics.jsonl").read_text().splitlines()]
    assert IGNORED not in {m["module"] for m in metrics}
    assert {m["bits"] for m in metrics if m["module"] == RULE_LAYER} == {8}
    assert int(mixed_run.weights[RULE_LAYER].codes.max()) > 15  # an 8-bit grid, not a 4-bit one

    out = mixed_run.export("vllm", tmp_path / "export")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    QuantizationConfig.model_validate(qc)
    assert qc["ignore"] == ["lm_head", IGNORED]
    groups = {tuple(g["targets"]): g["weights"] for g in qc["config_groups"].values()}
    assert groups[(RULE_LAYER,)]["num_bits"] == 8 and groups[(RULE_LAYER,)]["strategy"] == "channel"
    others = next(w for t, w in groups.items() if t != (RULE_LAYER,))
    assert others["num_bits"] == 4 and others["group_size"] == 32
    assert sum(len(t) for t in groups) == len(mixed_run.weights)

    tensors = load_file(out / "model.safetensors")
    source = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    assert f"{IGNORED}.weight_packed" not in tensors
    assert torch.equal(tensors[f"{IGNORED}.weight"], source.get_submodule(IGNORED).weight.half())
    fake = load_fake_quant_model(mixed_run)
    for name, q in mixed_run.weights.items():
        # the export's weights are the run's fake-quant ones, up to the scales stored in fp16
        assert torch.equal(fake.get_submodule(name).weight.data, q.dequantize())
        fp16_scales = QuantizedWeight(q.codes, q.scale.half().float(), q.zero, q.g_idx).dequantize()
        assert torch.equal(dequantize_exported(tensors, name, 8 if name == RULE_LAYER else 4), fp16_scales), name
    res = CliRunner().invoke(app, ["verify", str(out)])
    assert res.exit_code == 0, res.output


def test_model_card_names_method_settings_and_serving(mixed_run, tmp_path):
    (mixed_run.path / "eval.json").write_text(json.dumps({"dataset": "exl2-wiki", "split": "test", "seqlen": 48,
                                                          "windows": 3, "backend": "torch", "ppl": 12.5}))
    try:
        vllm_dir = export(mixed_run, "vllm", tmp_path / "v")
        hf_dir = export(mixed_run, "hf", tmp_path / "h")
    finally:
        (mixed_run.path / "eval.json").unlink()
    for folder in (vllm_dir, hf_dir):
        card = (folder / "README.md").read_text()
        assert "SOURCE MODEL CARD" not in card and "- method: gptq" in card
        for setting in ("bits=4", "group_size=32", "sym=true", "damp=0.01", "act_order=false"):
            assert setting in card, setting
        assert "alpha" not in card  # gptq does not read it
        assert "2 × 32 tokens, seed 0" in card and f"kept dense: lm_head, {IGNORED}" in card
        assert "12.5 on exl2-wiki" in card and f"vllm serve {folder}" in card
        assert not (folder / "eval.json").exists()
    assert "not measured" in (export(mixed_run, "vllm", tmp_path / "v2") / "README.md").read_text()


def quick(model, text, out, *extra):
    args = ["quantize", model, "--dataset", text, "--nsamples", 2, "--seqlen", 32, "--quiet", "-o", out, *extra]
    return CliRunner().invoke(app, [str(a) for a in args])


def test_fused_shards_with_different_schemes_are_refused(model_dir, calib_text, tmp_path):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [{"pattern": "model.layers.2.self_attn.k_proj", "bits": 8}]}))
    for extra, words in ((["--config", rules], ["model.layers.2.self_attn.q_proj", "model.layers.2.self_attn.k_proj",
                                                 "W4 per-channel asym", "W8 per-channel asym", "q/k/v"]),
                         (["--ignore", "*.mlp.up_proj"], ["model.layers.0.mlp.gate_proj", "dense", "gate/up"]),
                         (["--ignore", "model.layers.9.*"], ["matches no quantized linear"])):
        res = quick(model_dir, calib_text, tmp_path / "o", "--method", "rtn", *extra)
        assert res.exit_code == 2, res.output
        line = [l for l in res.output.splitlines() if l.startswith("error:")]
        assert len(line) == 1 and all(w in line[0] for w in words), res.output
        assert not (tmp_path / "o.partial").exists()


def test_rtn_defaults_to_minmax_and_run_json_records_used_settings(model_dir, calib_text, tmp_path):
    assert QuantConfig(method="rtn").grid == "minmax"
    assert QuantConfig(method="rtn", grid="hessian").grid == "hessian"
    assert QuantConfig().grid == "hessian" and QuantConfig(method="gptq").grid == "hessian"
    assert build_config("m", quant={"method": "rtn"}).quant.grid == "minmax"
    assert set(used_settings(QuantConfig(method="boa"))) == {"method", "bits", "group_size", "sym", "ignore", "rules",
                                                             "grid", "damp", "sample_damp", "act_order",
                                                             "row_act_order", "adaptive_grid", "centred_keys"}
    assert not {"damp", "sample_damp"} & set(used_settings(QuantConfig(method="rtn")))
    # the grid a method uses is recorded, not "unset"; a rule that changes the method takes that method's own
    assert [used_settings(QuantConfig(method=m, adaptive_grid=g))["adaptive_grid"] for m, g in (
        ("boa", None), ("turboboa", None), ("boa", True), ("turboboa", False))] == [False, True, True, False]
    run = QuantConfig(method="turboboa", adaptive_grid=True, rules=[Rule(pattern="re:.*q_proj$", method="boa"),
                                                                    Rule(pattern="re:.*k_proj$", bits=3)])
    assert layer_config(run, "model.layers.0.self_attn.q_proj").adaptive_grid is None
    assert layer_config(run, "model.layers.0.self_attn.k_proj").adaptive_grid is True
    # a rule's method adds what it reads
    rule = {"pattern": "*.down_proj", "method": "turboboa"}
    assert "alpha" in used_settings(QuantConfig(method="gptq", rules=[rule]))

    res = quick(model_dir, calib_text, tmp_path / "rtn", "--method", "rtn", "--alpha", 0.5, "--rows", 4)
    assert res.exit_code == 0, res.output
    recorded = json.loads((tmp_path / "rtn" / "run.json").read_text())["config"]["quant"]
    assert recorded == {"method": "rtn", "bits": 4, "group_size": -1, "sym": False, "grid": "minmax", "ignore": [],
                        "rules": []}
    # min-max grid: each row's extreme weights land on the grid's ends
    from transformers import AutoModelForCausalLM

    w = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).model.layers[0].mlp.up_proj.weight
    q = Run.open(tmp_path / "rtn").weights["model.layers.0.mlp.up_proj"]
    rows = torch.arange(w.shape[0])
    assert torch.equal(q.codes[rows, w.argmax(1)], torch.full((w.shape[0],), 15.0, dtype=q.codes.dtype))


def test_rule_alpha_sets_f2_per_linear(model_dir, calib_text, tmp_path):
    """A rule's alpha replaces the run's for the linears it matches: alpha 0 on every linear by rule quantizes bit for
    bit as --alpha 0, and alpha 0.25 by rule over a run-level 0 as the default 0.25 (R is still gathered). Catches a
    Rule that drops alpha, and F2's statistics gathered only when the run-level alpha is > 0; a negative rule alpha
    is a one-line error."""

    def codes(alpha: float, rule_alpha: float | None = None) -> dict:
        config = {"rules": [{"pattern": "re:.*", "alpha": rule_alpha}]} if rule_alpha is not None else None
        run = quantize(str(model_dir), config, output=tmp_path / f"run-{alpha}-{rule_alpha}", method="turboboa",
                       bits=3, alpha=alpha, dataset=str(calib_text), **FAST)
        return {name: (w.codes, w.scale) for name, w in run.weights.items()}

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1]) for k in a)

    with_f2, without = codes(0.25), codes(0.0)
    assert not same(with_f2, without)  # F2 changes this model's codes, so the comparisons below can fail
    assert same(codes(0.25, rule_alpha=0.0), without)
    assert same(codes(0.0, rule_alpha=0.25), with_f2)
    # run.json keeps each rule as written: its pattern and what it sets
    recorded = json.loads((tmp_path / "run-0.25-0.0" / "run.json").read_text())["config"]["quant"]["rules"]
    assert recorded == [{"pattern": "re:.*", "alpha": 0.0}]
    for bad in (-1, float("nan")):
        with pytest.raises(TbqError) as e:
            build_config("m", quant={"rules": [{"pattern": "re:.*", "alpha": bad}]})
        assert str(e.value).startswith("invalid setting rules.0.alpha: must be a finite number >= 0") and \
            "\n" not in str(e.value)
