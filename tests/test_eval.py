"""The evaluation scripts on tiny models (CPU): perplexity, zero-shot through lm-eval, random checkpoints, report."""

import json
import math
import random

import pytest
import torch

from tbq_eval import ppl as ppl_mod
from tbq_eval import random_checkpoint, report, zeroshot
from turboboa_export.calibration import load_text, tokenize
from turboboa_export.config import build_config
from turboboa_export.pipeline.rundir import load_fake_quant_model
from turboboa_export.pipeline.sequential import quantize_model


@pytest.fixture(scope="module")
def tiny_run(tiny_models, calib_text, tmp_path_factory):
    cfg = build_config(str(tiny_models["llama"]), quant={"method": "gptq", "bits": 4, "group_size": 16},
                       calib={"dataset": str(calib_text), "nsamples": 4, "seqlen": 48})
    return quantize_model(cfg, tmp_path_factory.mktemp("eval") / "run", progress=False)


def nll_ref(model, ids: list[int]) -> float:
    """Sum of -log p(ids[i] | ids[:i]) for i >= 1, in float64, one full forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    return -sum(float(lp[i - 1, t]) for i, t in enumerate(ids) if i > 0)


def test_ppl_of_run_and_model_match_float64_reference(tiny_run, tiny_models, calib_text, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_run)
    ids = tokenize(tok, load_text(str(calib_text), "test"))
    seqlen, n = 40, 3
    for target, model in ((tiny_run, load_fake_quant_model(tiny_run)),
                          (tiny_models["llama"], AutoModelForCausalLM.from_pretrained(tiny_models["llama"]))):
        got = ppl_mod.main([str(target), "--dataset", str(calib_text), "--seqlen", str(seqlen), "--max-windows",
                            str(n), "--device", "cpu", "--json", str(tmp_path / "p.json")])
        want = math.exp(sum(nll_ref(model, ids[i * seqlen:(i + 1) * seqlen].tolist()) for i in range(n))
                        / (n * (seqlen - 1)))
        assert got["windows"] == n and got["tokens"] == n * seqlen
        assert abs(got["ppl"] / want - 1) < 1e-5, (got["ppl"], want)
        assert json.loads((tmp_path / "p.json").read_text())["ppl"] == got["ppl"]
    fp = ppl_mod.main([str(tiny_models["llama"]), "--dataset", str(calib_text), "--seqlen", "40", "--max-windows", "3"])
    q = ppl_mod.main([str(tiny_run), "--dataset", str(calib_text), "--seqlen", "40", "--max-windows", "3"])
    assert fp["ppl"] != q["ppl"]  # the run is evaluated with its own (quantized) weights


def test_protocol_calibrates_and_evaluates_on_the_texts_asked(tiny_models, calib_text, tmp_path):
    """``--calib-dataset`` reaches each run's calibration (run.json), ``--eval-dataset``/``--eval-seqlen`` the
    perplexity, which equals tbq eval ppl on the same run and windows; one JSON line per run, the calibration named."""
    from tbq_eval import protocol

    out = tmp_path / "proto"
    protocol.main(["--model", str(tiny_models["llama"]), "--runs", "rtn:w4-g64,gptq:w3", "--out", str(out),
                   "--calib-dataset", str(calib_text), "--nsamples", "2", "--holdout", "1", "--seqlen", "32",
                   "--eval-dataset", str(calib_text), "--eval-seqlen", "40", "--device", "cpu", "--fp"])
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["run"] for r in rows] == ["fp", "rtn-w4-g64", "gptq-w3"]
    for row in rows[1:]:
        assert row["calib"] == f"{calib_text} 2x32"
        run = json.loads((out / row["run"] / "run.json").read_text())
        assert run["config"]["calib"]["dataset"] == str(calib_text)
        want = ppl_mod.main([str(out / row["run"]), "--dataset", str(calib_text), "--seqlen", "40",
                             "--device", "cpu"])["ppl"]
        assert math.isclose(row["ppl"], want, rel_tol=1e-6), (row, want)


def test_protocol_grid_suffix_sets_adaptive_grid():
    """``:adaptive`` / ``:fixed`` reach the run's config as adaptive_grid True / False (none: the method's own, unset);
    on a method without row blocks, or both at once, a one-line error."""
    from tbq_eval.protocol import parse_run
    from turboboa_export.config import build_config

    for item, want in (("boa:w4:adaptive", True), ("turboboa:w3-g64:fixed", False), ("boa:w4", None)):
        method, preset, _, transform, grid = parse_run(item)
        cfg = build_config("m", preset=preset, quant={"method": method, **grid}, transform=transform)
        assert cfg.quant.adaptive_grid is want and grid.get("adaptive_grid") is want, item
    for bad in ("boa:w4:adapt", "gptq:w4:adaptive", "boa:w4:adaptive:fixed"):
        with pytest.raises(SystemExit, match="adaptive"):
            parse_run(bad)
    # :centred reaches the config as centred_keys (alone or beside a grid); gptq/rtn refuse it in one line
    for item, want in (("boa:w4:centred", True), ("turboboa:w3:adaptive:centred", True), ("turboboa:w3", False)):
        method, preset, _, transform, quant = parse_run(item)
        assert build_config("m", preset=preset, quant={"method": method, **quant}).quant.centred_keys is want, item
    with pytest.raises(SystemExit, match="centred"):
        parse_run("gptq:w4:centred")


def test_ppl_too_short_text_is_a_clear_error(tiny_run, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("the river")
    with pytest.raises(SystemExit, match="fewer than one window"):
        ppl_mod.main([str(tiny_run), "--dataset", str(short), "--seqlen", "64"])


def write_mc_task(root, tok, model, n_docs=16, seed=3):
    """A local multiple-choice task whose gold answer is, per document, the choice our own float64 scoring
    prefers: lm-eval must then report accuracy 1 (a pipeline scoring anything else would miss some)."""
    from tests.tiny import WORDS

    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        query = " ".join(rng.choice(WORDS) for _ in range(6))
        choices = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) for _ in range(4)]
        ctx = tok(query, add_special_tokens=False)["input_ids"]
        scores = []
        for c in choices:
            whole = tok(query + " " + c, add_special_tokens=False)["input_ids"]
            assert whole[: len(ctx)] == ctx
            n_cont = len(whole) - len(ctx)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([whole])).logits[0].double()
            lp = torch.log_softmax(logits, -1)
            scores.append(sum(float(lp[i - 1, whole[i]]) for i in range(len(whole) - n_cont, len(whole))))
        docs.append({"query": query, "choices": choices, "gold": int(torch.tensor(scores).argmax())})
    data = root / "mc.jsonl"
    data.write_text("\n".join(json.dumps(d) for d in docs))
    (root / "tbq_tiny_mc.yaml").write_text(
        "task: tbq_tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{{{query}}}}\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{gold}}\"\nmetric_list:\n  - metric: acc\n")
    return docs


def test_zeroshot_local_task_through_lm_eval(tiny_run, tmp_path):
    from transformers import AutoTokenizer

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_mc_task(tasks, AutoTokenizer.from_pretrained(tiny_run), load_fake_quant_model(tiny_run))
    results = zeroshot.main([str(tiny_run), "--tasks", "tbq_tiny_mc", "--include-path", str(tasks), "--device", "cpu",
                             "--json", str(tmp_path / "z.json")])
    assert results["tbq_tiny_mc"]["acc,none"] == 1.0
    assert json.loads((tmp_path / "z.json").read_text())["results"]["tbq_tiny_mc"]["acc,none"] == 1.0
    assert "| tbq_tiny_mc | acc | 1.0000 |" in zeroshot.table(results)


def test_zeroshot_unknown_task_is_a_clear_error(tiny_run):
    with pytest.raises(SystemExit, match="unknown lm-eval task"):
        zeroshot.main([str(tiny_run), "--tasks", "no_such_task_xyz", "--device", "cpu"])


@pytest.mark.parametrize("fmt", ["fp16", "vllm"])
def test_random_checkpoint_shapes(tmp_path, fmt):
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from turboboa_export.export.compressed_tensors import dequantize_exported

    out = random_checkpoint.main(["tiny-llama", "-o", str(tmp_path / fmt), "--format", fmt, "--seed", "1"])
    cfg = AutoConfig.from_pretrained(out)
    tensors = load_file(out / "model.safetensors")
    name = "model.layers.1.mlp.down_proj"
    if fmt == "fp16":
        w = tensors[f"{name}.weight"]
        assert w.dtype == torch.float16 and tuple(w.shape) == (256, 512)
        assert 0.015 < float(w.float().std()) < 0.025
        assert not hasattr(cfg, "quantization_config")
    else:
        assert cfg.quantization_config["config_groups"]["group_0"]["weights"]["num_bits"] == 4
        w = dequantize_exported(tensors, name, 4)
        assert tuple(w.shape) == (256, 512)
        # codes uniform on 0..15 around zero 8 with scales in [0.002, 0.003), stored in fp16 (which may round
        # 0.003 up by half an ulp, 2^-11 relative): |w| <= 8 * 0.003 (1 + 2^-11)
        assert float(w.abs().max()) <= 8 * 0.003 * (1 + 2**-11) and float(w.std()) > 0.005


def test_random_checkpoint_unknown_shape():
    with pytest.raises(SystemExit, match="unknown shape"):
        random_checkpoint.main(["llama-9000", "-o", "/tmp/never"])


def test_report_tables_and_plots(tmp_path):
    rows = [{"run": "fp", "method": "fp", "bits": 32, "ppl": 8.6, "c4_ppl": 20.1}]
    rng = random.Random(0)
    for method in ("rtn", "gptq", "turboboa"):
        for preset, bits, gs in (("w2", 2, -1), ("w3", 3, -1), ("w4-g64", 4, 64)):
            rows.append({"run": f"{method}-{preset}", "method": method, "preset": preset, "bits": bits,
                         "group_size": gs, "ppl": rng.uniform(9, 90), "c4_ppl": rng.uniform(20, 200),
                         "quantize_s": rng.uniform(10, 200)})
    proto = tmp_path / "results.jsonl"
    proto.write_text("\n".join(json.dumps(r) for r in rows))
    tput = [{"label": label, "batch": b, "output_tok_s": v * b} for label, v in (("fp16", 100.0), ("w4", 180.0))
            for b in (1, 16)]
    (tmp_path / "t.json").write_text(json.dumps(tput))
    md = report.main(["--protocol", str(proto), "--throughput", str(tmp_path / "t.json"), "-o", str(tmp_path / "r"),
                      "--official"]).read_text()
    for r in rows[1:]:
        line = (f"| {report.config_name(r)} | {r['run']} | {r['ppl']:.3f} | {r['c4_ppl']:.3f} | "
                f"{r['quantize_s']:.0f} |")
        assert line in md
    assert "| W3 per-channel | turboboa-w3 (official code) | 13.283 | - | 332 |" in md
    assert "| w4 | 180 (1.80x) | 2880 (1.80x) |" in md
    for png in ("ppl_vs_bits.png", "throughput.png"):
        assert (tmp_path / "r" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "r" / "report.json").read_text())["protocol"][0]["run"] == "fp"
