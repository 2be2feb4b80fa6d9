import json

import pytest
import torch
from safetensors.torch import load_file

from turboboa_export.config import build_config
from turboboa_export.pipeline import rundir
from turboboa_export.pipeline.rundir import load_fake_quant_model, load_run
from turboboa_export.pipeline.sequential import quantize_model

from .cli_checks import cli, one_line_error


def quick_args(model, text, out, *extra):
    return ["quantize", model, "--dataset", text, "--nsamples", 4, "--seqlen", 48, "--quiet", "-o", out, *extra]


def block_tensors(run):
    out = {}
    for f in sorted((run / "blocks").glob("*.safetensors")):
        out.update(load_file(f))
    return out


# every method on three families; Mistral (sliding window) and Qwen2 (q/k/v biases) through TurboBoA, which uses
# every statistic
END_TO_END = [(kind, method) for kind in ("llama", "qwen3", "gemma3") for method in ("rtn", "gptq", "boa", "turboboa")]


@pytest.mark.parametrize("kind,method", END_TO_END + [("mistral", "turboboa"), ("qwen2", "turboboa")])
def test_quantize_end_to_end(tiny_models, calib_text, tmp_path, kind, method):
    out = tmp_path / "run"
    res = cli(*quick_args(tiny_models[kind], calib_text, out, "--method", method, "--bits", 3, "--group-size", 16))
    assert res.exit_code == 0, res.output
    info, weights = load_run(out)
    assert info["status"] == "complete" and info["config"]["quant"]["method"] == method
    assert len(weights) == 3 * 7
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 21 and all(m["loss"] >= 0 and m["seconds"] >= 0 for m in metrics)
    model = load_fake_quant_model(out)
    name, q = next(iter(weights.items()))
    assert torch.equal(model.get_submodule(name).weight.data, q.dequantize())
    logits = model(input_ids=torch.tensor([[1, 5, 9, 12]])).logits
    assert torch.isfinite(logits).all()
    assert cli("inspect", out).exit_code == 0


def test_same_seed_same_bits_and_other_seed_differs(tiny_models, calib_text, tmp_path):
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path / name
        assert cli(*quick_args(tiny_models["llama"], calib_text, out, "--method", "gptq", "--seed", seed)).exit_code == 0
        runs.append(block_tensors(out))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def interrupt_after_first_block(cfg, out, monkeypatch) -> None:
    """Run ``cfg`` into ``out`` and stop it (KeyboardInterrupt) right after block 0 is saved."""
    original = rundir.RunWriter.save_block

    def crash_after_first(self, index, weights, metrics):
        original(self, index, weights, metrics)
        if index == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(rundir.RunWriter, "save_block", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        quantize_model(cfg, out, progress=False)
    monkeypatch.setattr(rundir.RunWriter, "save_block", original)


def test_interrupted_run_resumes_to_the_same_bits(tiny_models, calib_text, tmp_path, monkeypatch):
    cfg = build_config(str(tiny_models["qwen3"]), quant={"method": "gptq", "bits": 2},
                       calib={"dataset": str(calib_text), "nsamples": 4, "seqlen": 48})
    full = quantize_model(cfg, tmp_path / "full", progress=False)
    interrupt_after_first_block(cfg, tmp_path / "resumed", monkeypatch)
    partial = tmp_path / "resumed.partial"
    assert json.loads((partial / "run.json").read_text())["blocks_done"] == 1
    assert not (tmp_path / "resumed").exists()
    quantize_model(cfg, tmp_path / "resumed", resume=True, progress=False)
    a, b = block_tensors(full), block_tensors(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len((tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()) == 21


def test_error_bits(tiny_models, calib_text, tmp_path):
    one_line_error(cli(*quick_args(tiny_models["llama"], calib_text, tmp_path / "o", "--bits", 5)), "bits", "2, 3, 4, 8")


def test_error_group_size_names_the_layer(tiny_models, calib_text, tmp_path):
    res = cli(*quick_args(tiny_models["llama"], calib_text, tmp_path / "o", "--group-size", 48))
    one_line_error(res, "group size 48", "model.layers.0.self_attn.q_proj")
    assert not (tmp_path / "o.partial").exists()


def test_error_missing_model(calib_text, tmp_path):
    one_line_error(cli(*quick_args(tmp_path / "nope", calib_text, tmp_path / "o")), "does not exist")


def test_error_unknown_architecture(calib_text, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from .tiny import make_tokenizer

    path = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=160)).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    one_line_error(cli(*quick_args(path, calib_text, tmp_path / "o")), "unsupported architecture 'gpt2'", "llama")


def test_error_missing_dataset_file(tiny_models, tmp_path):
    one_line_error(cli(*quick_args(tiny_models["llama"], tmp_path / "missing.txt", tmp_path / "o")), "missing.txt", "does not exist")


def test_error_non_empty_output(tiny_models, calib_text, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep").write_text("x")
    one_line_error(cli(*quick_args(tiny_models["llama"], calib_text, out)), "not empty", "--overwrite")
    res = cli(*quick_args(tiny_models["llama"], calib_text, out, "--overwrite", "--method", "rtn"))
    assert res.exit_code == 0, res.output
    assert not (out / "keep").exists() and (out / "run.json").exists()


def test_preset_and_config_file(tiny_models, calib_text, tmp_path):
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"quant": {"method": "rtn", "grid": "mse"}, "calib": {"seed": 3}}))
    cfg = build_config("m", preset="w3", config_file=cfg_file, quant={"bits": None, "sym": True})
    assert (cfg.quant.bits, cfg.quant.method, cfg.quant.grid, cfg.quant.sym, cfg.calib.seed) == (3, "rtn", "mse", True, 3)
    one_line_error(cli(*quick_args(tiny_models["llama"], calib_text, tmp_path / "o", "--preset", "w9")), "unknown preset")


@pytest.fixture(scope="module")
def method_runs(tiny_models, calib_text, tmp_path_factory):
    """Block weights of a tiny Llama quantized by gptq, boa, turboboa and turboboa with alpha = 0."""
    root = tmp_path_factory.mktemp("methods")
    runs = {}
    for name, quant in {"gptq": {"method": "gptq"}, "boa": {"method": "boa"}, "turboboa": {"method": "turboboa"},
                        "alpha0": {"method": "turboboa", "alpha": 0.0}}.items():
        cfg = build_config(str(tiny_models["llama"]), quant={**quant, "bits": 2},
                           calib={"dataset": str(calib_text), "nsamples": 4, "seqlen": 48})
        weights = load_run(quantize_model(cfg, root / name, progress=False))[1]
        runs[name] = {k: q.dequantize() for k, q in weights.items()}
    return runs


def layer(runs, method, block, role):
    path = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
            "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}[role]
    return runs[method][f"model.layers.{block}.{path}"]


def test_methods_differ_where_they_must(method_runs):
    """Block 0 sees the same inputs under every method: BoA equals GPTQ on o/gate/up/down (plain GPTQ there) and
    differs on q/k/v (two-sided, attention-weighted H_in); TurboBoA differs from BoA everywhere (F1, F3). Block 0's
    two streams are equal (R = 0), so alpha changes nothing there; from block 1 on it changes every linear."""
    roles = ("q", "k", "v", "o", "gate", "up", "down")
    for role in roles:
        boa, gptq = layer(method_runs, "boa", 0, role), layer(method_runs, "gptq", 0, role)
        assert torch.equal(boa, gptq) == (role in ("o", "gate", "up", "down")), role
        assert not torch.equal(layer(method_runs, "turboboa", 0, role), boa), role
        assert torch.equal(layer(method_runs, "turboboa", 0, role), layer(method_runs, "alpha0", 0, role)), role
        assert not torch.equal(layer(method_runs, "turboboa", 1, role), layer(method_runs, "alpha0", 1, role)), role
