"""Issue 18: real checkpoints and bad files, one test (at least) per numbered case, each with its expected value."""

import json
import logging
import math
import shutil
import struct
from pathlib import Path

import pytest
import torch

from turboboa_export.config import build_config
from turboboa_export.errors import TbqError
from turboboa_export.pipeline.rundir import load_fake_quant_model, load_run
from turboboa_export.pipeline.sequential import quantize_model

from .cli_checks import cli, one_line_error
from .tiny import make_tokenizer, sample_text

BOS = 1  # "<s>" in tests/tiny.py's tokenizer
EVAL = Path(__file__).parents[1] / "tbq_eval"


def small_model(root, name="tiny-llama", kind="llama", edit=None, **overrides):
    """A saved 1-layer model (hidden 32) with the tiny tokenizer; ``edit(model)`` changes weights before saving."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig

    torch.manual_seed(0)
    tok = make_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256)
    common.update(overrides)
    config = (LlamaConfig(**common) if kind == "llama" else
              Gemma3TextConfig(**common, sliding_window=8, layer_types=["sliding_attention"] * common["num_hidden_layers"]))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if edit is not None:
        with torch.no_grad():
            edit(model)
    path = root / name
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def quick(model, text, out, *extra):
    return cli("quantize", model, "--dataset", text, "--nsamples", 4, "--seqlen", 32, "--quiet", "-o", out, *extra)


@pytest.fixture(scope="module")
def exported(calib_text, tmp_path_factory):
    """A small model, its RTN W8 run and that run's vLLM export."""
    root = tmp_path_factory.mktemp("robust")
    model = small_model(root)
    assert quick(model, calib_text, root / "run", "--method", "rtn", "--bits", 8).exit_code == 0
    assert cli("export", root / "run", "-o", root / "export").exit_code == 0
    return {"model": model, "run": root / "run", "export": root / "export"}


# 1. the model folder's generation config (and every other non-weight file) reaches the run and both exports
GENERATION = {"bos_token_id": 1, "do_sample": True, "eos_token_id": [2, 0], "repetition_penalty": 1.05,
              "temperature": 0.6, "top_k": 20, "top_p": 0.9}


def test_1_generation_config_travels_byte_for_byte(calib_text, tmp_path):
    from transformers import GenerationConfig

    model = small_model(tmp_path)
    src = (json.dumps(GENERATION, indent=1) + "\n").encode()
    (model / "generation_config.json").write_bytes(src)
    (model / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert quick(model, calib_text, tmp_path / "run", "--method", "rtn", "--bits", 8).exit_code == 0
    assert cli("export", tmp_path / "run", "-o", tmp_path / "vllm").exit_code == 0
    assert cli("export", tmp_path / "run", "--format", "hf", "-o", tmp_path / "hf").exit_code == 0
    for folder in ("run", "vllm", "hf"):
        assert (tmp_path / folder / "generation_config.json").read_bytes() == src, folder
        assert (tmp_path / folder / "chat_template.jinja").read_bytes() == (model / "chat_template.jinja").read_bytes()
        g = GenerationConfig.from_pretrained(tmp_path / folder)
        assert (g.eos_token_id, g.top_k, g.temperature, g.top_p, g.repetition_penalty) == ([2, 0], 20, 0.6, 0.9, 1.05)


# 2. a head-pruned model (one kv head's k_proj rows all zero: that head's H_out is the zero matrix)
def prune_kv_head_0(model):
    model.model.layers[0].self_attn.k_proj.weight[:8] = 0  # head_dim 8: kv head 0


@pytest.mark.parametrize("method", ["boa", "turboboa"])
def test_2_zero_output_hessian_quantizes(calib_text, tmp_path, method):
    model = small_model(tmp_path, edit=prune_kv_head_0)
    res = quick(model, calib_text, tmp_path / "run", "--method", method, "--damp", 0.5)
    assert res.exit_code == 0, res.output
    _, weights = load_run(tmp_path / "run")
    k = weights["model.layers.0.self_attn.k_proj"].dequantize()
    assert torch.equal(k[:8], torch.zeros(8, 32))  # the pruned head stays pruned
    q = weights["model.layers.0.self_attn.q_proj"].dequantize()
    assert torch.isfinite(q).all() and q[:16].abs().sum() > 0  # q heads 0-1 (kv head 0) are kept
    assert not (tmp_path / "run.partial").exists()


# 3. --damp 0 (and --sample-damp 0) on a rank-deficient Hessian (one window of 8 tokens, inputs 32-64 wide); a NaN
# Hessian names its module
def test_3_zero_damping_is_floored(exported, calib_text, tmp_path):
    res = cli("quantize", exported["model"], "--dataset", calib_text, "--nsamples", 1, "--seqlen", 8, "--quiet",
              "--method", "gptq", "--damp", 0, "--sample-damp", 0, "-o", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "complete"


def test_3_unfactorable_hessian_is_one_line_naming_the_module(calib_text, tmp_path):
    def nan_mlp_norm(model):
        model.model.layers[0].post_attention_layernorm.weight[3] = float("nan")

    model = small_model(tmp_path, edit=nan_mlp_norm)
    res = quick(model, calib_text, tmp_path / "run", "--method", "turboboa")
    one_line_error(res, "cannot quantize model.layers.0.mlp.gate_proj", "NaN")
    assert not (tmp_path / "run.partial").exists() and not (tmp_path / "run").exists()


# 4. input channels never seen in calibration (zero for every token but BOS) keep their weights
def bos_only_channels(model):
    emb = model.model.embed_tokens.weight
    emb[:, :8] = 0
    emb[BOS, :8] = 1.0


@pytest.mark.parametrize("method", ["gptq", "turboboa"])
def test_4_unseen_input_channels_are_kept_and_reported(calib_text, tmp_path, caplog, method):
    model_dir = small_model(tmp_path, edit=bos_only_channels)
    cfg = build_config(str(model_dir), quant={"method": method, "bits": 8},
                       calib={"dataset": str(calib_text), "nsamples": 4, "seqlen": 32})
    with caplog.at_level(logging.WARNING, logger="tbq"):
        run = quantize_model(cfg, tmp_path / "run", progress=False)
    warned = [r.getMessage() for r in caplog.records if "input channels" in r.getMessage()]
    assert sorted(m.split(":")[0] for m in warned) == [f"model.layers.0.self_attn.{p}_proj" for p in "kqv"]
    assert all(" 8 input channels" in m for m in warned)
    metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["unseen_input_channels"] for m in metrics] == [8, 8, 8, 0, 0, 0, 0]
    from transformers import AutoModelForCausalLM

    fp = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    quant = load_fake_quant_model(run)
    ids = torch.tensor([[BOS, 20, 31, 45, 60, 7, 90, 12]])
    with torch.no_grad():
        a, b = quant(input_ids=ids).logits, fp(input_ids=ids).logits
        w = quant.model.layers[0].self_attn.q_proj.weight[:, :8]
        w_fp = fp.model.layers[0].self_attn.q_proj.weight[:, :8]
    assert float((w - w_fp).abs().max()) < float(w_fp.abs().max()) / 100  # W8: within a step, not zeroed
    assert float((a - b).norm() / b.norm()) < 0.01


# 5. a calibration text too short for what was asked
def test_5_too_few_distinct_windows_is_refused(exported, tmp_path):
    from turboboa_export.calibration import window_starts

    with pytest.raises(TbqError, match="only 1 distinct windows of 128 tokens, 64 asked"):
        window_starts(129, 64, 128, 0)
    tok = make_tokenizer()
    text = tmp_path / "short.txt"
    text.write_text(sample_text(40, seed=3))
    n = len(tok(text.read_text(), add_special_tokens=False)["input_ids"])
    res = cli("quantize", exported["model"], "--dataset", text, "--nsamples", 4, "--seqlen", n - 2, "--quiet",
              "-o", tmp_path / "run")
    one_line_error(res, f"has {n} tokens: only 2 distinct windows of {n - 2} tokens, 4 asked")


def test_5_coverage_is_reported_in_run_json_and_repeats_warn(exported, calib_text, caplog):
    from turboboa_export.calibration import window_starts
    from turboboa_export.pipeline.sequential import report_coverage

    cal = json.loads((exported["run"] / "run.json").read_text())["calibration"]
    assert (cal["windows"], cal["distinct_windows"], cal["tokens"]) == (4, 4, 128)
    assert 32 < cal["distinct_tokens"] <= 128 and cal["text_tokens"] > 1000
    starts = window_starts(44, 12, 32, 0)  # 12 draws from 12 possible starts repeat
    assert len(set(starts)) < 12
    with caplog.at_level(logging.WARNING, logger="tbq"):
        report_coverage({"windows": 12, "distinct_windows": len(set(starts)), "distinct_tokens": 40,
                         "text_tokens": 44, "heldout_windows": 0}, 32, progress=False)
    assert f"only {len(set(starts))} of the 12 calibration windows are distinct" in caplog.text


# 7. an output folder that is, contains or lies inside the input model (or the run being exported)
def test_7_output_over_the_input_is_refused(exported, calib_text, tmp_path):
    model = tmp_path / "models" / "tiny-llama"
    shutil.copytree(exported["model"], model)
    for out, relation in ((model.parent, "contains"), (model, "is"), (model / "run", "lies inside")):
        one_line_error(quick(model, calib_text, out, "--overwrite"), relation, "the input model")
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()
    run = tmp_path / "run"
    shutil.copytree(exported["run"], run)
    for fmt in ("vllm", "hf"):
        one_line_error(cli("export", run, "-o", run, "--format", fmt, "--overwrite"), "is the input run")
        one_line_error(cli("export", run, "-o", tmp_path, "--format", fmt, "--overwrite"), "contains the input run")
    assert (run / "run.json").is_file()


# 8. malformed input files: one line naming the file (and the line), never a traceback
@pytest.mark.parametrize("case", ["config-list", "config-quant-string", "binary-dataset", "broken-jsonl",
                                  "broken-tokenizer"])
def test_8_malformed_inputs_are_one_line_errors(exported, calib_text, tmp_path, case):
    model, data, extra = exported["model"], calib_text, []
    if case.startswith("config"):
        cfg = tmp_path / "c.json"
        cfg.write_text(json.dumps([1, 2]) if case == "config-list" else json.dumps({"quant": "w4"}))
        extra, words = ["--config", cfg], [str(cfg), "list" if case == "config-list" else '"quant" is a JSON str']
    elif case == "binary-dataset":
        data = tmp_path / "data.txt"
        data.write_bytes(bytes(range(256)) * 8)
        words = [str(data), "not UTF-8"]
    elif case == "broken-jsonl":
        data = tmp_path / "data.jsonl"
        data.write_text('{"text": "the river"}\n{"text": "the city\n')
        words = [str(data), "line 2", "not valid JSON"]
    else:
        model = tmp_path / "m"
        shutil.copytree(exported["model"], model)
        (model / "tokenizer.json").write_text((model / "tokenizer.json").read_text()[:100])
        words = ["tokenizer", str(model)]
    one_line_error(quick(model, data, tmp_path / "run", *extra), *words)
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_8_verify_on_a_truncated_file_is_one_line(exported, tmp_path, name):
    out = tmp_path / "export"
    shutil.copytree(exported["export"], out)
    f = out / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    one_line_error(cli("verify", out), str(f))


# 9. verify catches one flipped byte in any tensor, naming it
def flip_first_byte(path, tensor):
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    start = 8 + n + json.loads(raw[8 : 8 + n])[tensor]["data_offsets"][0]
    raw[start] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("tensor", ["model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
                                    "model.norm.weight"])
def test_9_verify_names_a_flipped_byte_outside_the_linears(exported, tmp_path, tensor):
    out = tmp_path / "export"
    shutil.copytree(exported["export"], out)
    assert cli("verify", out).exit_code == 0
    flip_first_byte(out / "model.safetensors", tensor)
    res = cli("verify", out)
    assert res.exit_code == 1 and f"mismatch: {tensor}" in res.output, res.output


# the export and evaluation dtype per family: float32 Gemma 3 goes bf16 (vLLM refuses it in fp16)
def test_dtype_per_family(exported, calib_text, tmp_path):
    from safetensors.torch import load_file

    from tbq_eval.ppl import serving_dtype, torch_dtype

    gemma = small_model(tmp_path, "tiny-gemma3", kind="gemma3")
    assert quick(gemma, calib_text, tmp_path / "run", "--method", "rtn", "--bits", 8).exit_code == 0
    assert cli("export", tmp_path / "run", "-o", tmp_path / "export").exit_code == 0
    assert json.loads((tmp_path / "export" / "config.json").read_text())["dtype"] == "bfloat16"
    tensors = load_file(tmp_path / "export" / "model.safetensors")
    assert tensors["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert tensors["model.layers.0.self_attn.q_proj.weight_scale"].dtype == torch.bfloat16
    assert serving_dtype(str(tmp_path / "export")) == "bfloat16"
    assert serving_dtype(str(exported["export"])) == "float16"  # Llama stays fp16
    assert serving_dtype(str(gemma)) == "bfloat16"  # the float32 source folder too
    assert serving_dtype(str(gemma), "float32") == "float32" and torch_dtype("bfloat16") == torch.bfloat16
    from tbq_eval import ppl

    result = ppl.main([str(tmp_path / "run"), "--dataset", str(calib_text), "--seqlen", "16", "--max-windows", "1",
                       "--dtype", "bfloat16"])
    assert math.isfinite(result["ppl"])
    for script in ("ppl", "vllm_ppl", "zeroshot", "throughput", "protocol", "vllm_logprobs", "vllm_throughput"):
        assert 'add_argument("--dtype", default="auto"' in (EVAL / f"{script}.py").read_text(), script
