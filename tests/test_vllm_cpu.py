"""A real vLLM (the CPU build, shared/cpu-vllm) serves our int4 exports. Runs where TBQ_VLLM_PYTHON names a
Python with vLLM (CI sets it); skipped elsewhere."""

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from tbq_eval import ppl, random_checkpoint, throughput
from turboboa_export.config import build_config
from turboboa_export.export.compressed_tensors import export_vllm
from turboboa_export.pipeline.sequential import quantize_model

from .reference import reference_model
from .tiny import make_tokenizer

VLLM_PYTHON = os.environ.get("TBQ_VLLM_PYTHON")
pytestmark = pytest.mark.skipif(not VLLM_PYTHON, reason="set TBQ_VLLM_PYTHON to a Python with vLLM (CI does)")
INT4_CPU = "avx512f" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else False
needs_int4_cpu = pytest.mark.skipif(not INT4_CPU, reason="vLLM 0.25.1's CPU build has no int4 GEMM (cpu_gemm_wna16) "
                                                         "without AVX-512, which this CPU lacks")
ENV = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
SCRIPT = Path(__file__).resolve().parents[1] / "tbq_eval" / "vllm_logprobs.py"


@pytest.fixture(scope="module")
def vllm_model(tmp_path_factory):
    """A 2-layer LLaMA with vLLM-friendly shapes (K, N multiples of 128, head_dim 64), sharp logits."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    root = tmp_path_factory.mktemp("vllm")
    torch.manual_seed(0)
    tok = make_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=256,
                      initializer_range=0.1, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(root / "fp")
    tok.save_pretrained(root / "fp")
    text = root / "calib.txt"
    from .tiny import sample_text

    text.write_text(sample_text())
    return root, text


def prompt_logprobs(model, prompt):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    return [float(lp[i - 1, t]) for i, t in enumerate(prompt) if i > 0], int(logits[-1].argmax())


@pytest.mark.parametrize("scheme", [{"sym": True, "group_size": 128}, {"sym": False, "group_size": -1}])
@needs_int4_cpu
def test_vllm_cpu_matches_reference(vllm_model, tmp_path, scheme):
    root, text = vllm_model
    cfg = build_config(str(root / "fp"), quant={"method": "gptq", "bits": 4, **scheme},
                       calib={"dataset": str(text), "nsamples": 4, "seqlen": 64})
    run = quantize_model(cfg, tmp_path / "run", progress=False)
    ckpt = export_vllm(run, tmp_path / "export")
    prompts = [[5, 17, 33, 8, 90, 41, 12, 7, 66, 3], [100, 2, 14, 59, 23, 77, 31, 9]]
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    subprocess.run([VLLM_PYTHON, str(SCRIPT), str(ckpt), str(tmp_path / "p.json"), str(tmp_path / "o.json"),
                    "--max-tokens", "1"], check=True, env=ENV, timeout=600)
    got = json.loads((tmp_path / "o.json").read_text())
    ref = reference_model(run)
    from transformers import AutoModelForCausalLM

    fp = AutoModelForCausalLM.from_pretrained(root / "fp", dtype=torch.float32)
    worst, worst_fp = 0.0, 0.0
    for prompt, out in zip(prompts, got):
        want, greedy = prompt_logprobs(ref, prompt)
        unq, _ = prompt_logprobs(fp, prompt)
        worst = max(worst, max(abs(a - b) for a, b in zip(out["prompt_logprobs"], want)))
        worst_fp = max(worst_fp, max(abs(a - b) for a, b in zip(out["prompt_logprobs"], unq)))
        assert out["greedy"][0] == greedy
    assert worst < 0.05, worst
    assert worst_fp > 0.05, worst_fp  # the check can fail: the unquantized model gives other log-probs


VLLM_READS_CONFIG = """
import json, sys
from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import CompressedTensorsConfig
qc = json.load(open(sys.argv[1]))["quantization_config"]
cfg = CompressedTensorsConfig.from_config(qc)
schemes = {t: (m["weights"].num_bits, m["weights"].group_size, m["weights"].symmetric)
           for t, m in cfg.target_scheme_map.items()}
print(json.dumps({"schemes": schemes, "ignore": cfg.ignore, "format": cfg.quant_format}))
"""


@pytest.mark.parametrize("scheme", [{"sym": True, "group_size": 128}, {"sym": False, "group_size": -1}])
def test_vllm_reads_our_int4_export_config(vllm_model, tmp_path, scheme):
    """On every CPU (also those without AVX-512, where vLLM's CPU build cannot run int4): vLLM's own
    compressed-tensors reader takes our int4 export's quantization_config as the scheme we wrote."""
    root, text = vllm_model
    cfg = build_config(str(root / "fp"), quant={"method": "rtn", "bits": 4, **scheme},
                       calib={"dataset": str(text), "nsamples": 2, "seqlen": 32})
    ckpt = export_vllm(quantize_model(cfg, tmp_path / "run", progress=False), tmp_path / "export")
    done = subprocess.run([VLLM_PYTHON, "-c", VLLM_READS_CONFIG, str(ckpt / "config.json")], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    group = None if scheme["group_size"] == -1 else scheme["group_size"]
    assert got["schemes"] == {"Linear": [4, group, scheme["sym"]]}
    assert got["ignore"] == ["lm_head"] and got["format"] == "pack-quantized"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_int4_cpu
def test_openai_server_answers_completions(vllm_model, tmp_path):
    root, text = vllm_model
    cfg = build_config(str(root / "fp"), quant={"method": "rtn", "bits": 4, "sym": True, "group_size": 128},
                       calib={"dataset": str(text), "nsamples": 2, "seqlen": 64})
    ckpt = export_vllm(quantize_model(cfg, tmp_path / "run", progress=False), tmp_path / "export")
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(ckpt),
                               "--host", "127.0.0.1", "--port", str(port), "--dtype", "float16",
                               "--max-model-len", "256", "--enforce-eager", "--max-num-batched-tokens", "256",
                               "--max-num-seqs", "4"], env=ENV, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail("vLLM server did not start:\n" + (tmp_path / "server.log").read_text()[-3000:])
                time.sleep(2)
        body = json.dumps({"model": str(ckpt), "prompt": [5, 17, 33, 8], "max_tokens": 4, "temperature": 0}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body, {"Content-Type": "application/json"})
        reply = json.loads(urllib.request.urlopen(req, timeout=60).read())
        assert reply["choices"][0]["finish_reason"] in ("length", "stop")
        assert reply["usage"]["completion_tokens"] >= 1
        rows = throughput.main(["serve", f"http://127.0.0.1:{port}", "--concurrency", "1,2", "--requests", "3",
                                "--input-len", "8", "--output-len", "5", "--json", str(tmp_path / "serve.json")])
        assert [r["concurrency"] for r in rows] == [1, 2]
        assert all(r["output_tokens"] == 15 and r["output_tok_s"] > 0 and r["ttft_s_median"] > 0 for r in rows)
    finally:
        server.terminate()
        server.wait(timeout=60)


@needs_int4_cpu
def test_ppl_vllm_backend_matches_torch(vllm_model, tmp_path):
    """tbq_eval.ppl scores the same windows through vLLM (the export) and PyTorch (the run)."""
    root, text = vllm_model
    cfg = build_config(str(root / "fp"), quant={"method": "gptq", "bits": 4, "sym": True, "group_size": 128},
                       calib={"dataset": str(text), "nsamples": 4, "seqlen": 64})
    run = quantize_model(cfg, tmp_path / "run", progress=False)
    ckpt = export_vllm(run, tmp_path / "export")
    common = ["--dataset", str(text), "--seqlen", "96", "--max-windows", "3"]
    got = ppl.main([str(ckpt), "--backend", "vllm", "--vllm-python", VLLM_PYTHON, *common])
    want = ppl.main([str(run), "--device", "cpu", *common])
    fp = ppl.main([str(root / "fp"), "--device", "cpu", *common])
    assert got["tokens"] == want["tokens"] == 3 * 96
    # vLLM and PyTorch agree far more closely than the quantized weights and the fp ones do (measured on an AVX-512
    # Xeon: 0.014% against 0.69%), so serving the fp weights, or the export misread, would fail
    gap, quantization = abs(got["ppl"] / want["ppl"] - 1), abs(fp["ppl"] / want["ppl"] - 1)
    assert gap < min(0.01, quantization / 4), (got, want, fp)


@needs_int4_cpu
def test_offline_throughput_of_random_checkpoints(tmp_path):
    """A random-weight int4 checkpoint of a real shape family runs through vLLM's offline generate (the fp16
    random checkpoint's shapes are checked in test_eval.py; one vLLM start here keeps CI short)."""
    int4 = random_checkpoint.main(["tiny-llama", "-o", str(tmp_path / "int4"), "--format", "vllm"])
    rows = throughput.main(["offline", str(int4), "--labels", "int4", "--batch-sizes", "1,3",
                            "--input-len", "8", "--output-len", "6", "--enforce-eager", "--vllm-python", VLLM_PYTHON,
                            "--json", str(tmp_path / "t.json")])
    assert [(r["label"], r["batch"]) for r in rows] == [("int4", 1), ("int4", 3)]
    assert all(r["output_tokens"] == 6 * r["batch"] and r["output_tok_s"] > 0 for r in rows)
    assert json.loads((tmp_path / "t.json").read_text()) == rows


def plugin_site(folder: Path) -> str:
    """A PYTHONPATH on which vLLM finds tbq's plugin as an installed distribution's ``vllm.general_plugins`` entry
    point (what `pip install tbq` gives), with tbq importable from this checkout."""
    from turboboa_export.vllm_plugin import ENTRY_POINT

    dist = folder / "tbq_checkout-0.0.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tbq-checkout\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text(f"[vllm.general_plugins]\ntbq = {ENTRY_POINT}\n")
    return f"{folder}{os.pathsep}{Path(__file__).resolve().parents[1]}"


def dense_with_transform(run: Path, export: Path, out: Path) -> Path:
    """The run's dequantized (rotated) weights as a dense checkpoint carrying the export's quantization_config with
    no quantized layers: vLLM then applies only the export's online transform (for CPUs without int4 GEMMs)."""
    from turboboa_export.pipeline.rundir import load_fake_quant_model

    model = load_fake_quant_model(run)
    model.config.quantization_config = None
    model.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    qc = json.loads((export / "config.json").read_text())["quantization_config"]
    config["quantization_config"] = {"quant_method": qc["quant_method"], "format": "dense", "config_groups": {},
                                     "transform_config": qc["transform_config"]}
    (out / "config.json").write_text(json.dumps(config))
    return out


def write_model_768(folder: Path) -> None:
    """A 2-layer LLaMA with intermediate size 768 = 12 * 64 (a full online Hadamard with a Paley base) at
    folder/fp, and calibration text at folder/calib.txt."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from .tiny import sample_text

    torch.manual_seed(0)
    tok = make_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=768, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=256,
                      initializer_range=0.1, tie_word_embeddings=False)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(folder / "fp")
    tok.save_pretrained(folder / "fp")
    (folder / "calib.txt").write_text(sample_text())


def test_vllm_cpu_serves_rotated_export(tmp_path):
    """A Hadamard-rotated W4 run exported with its online down_proj Hadamard in ``transform_config`` (order
    768 = 12 * 64: the plugin's tbq-hadamard, its H_12 product and its Sylvester-64 GEMM; one vLLM start keeps CI
    short, the block form's plugin path is one call of the same code), served with tbq's plugin found as an entry
    point: vLLM's log-probs match our reference, which they would not without the transform (the reference with the
    online Hadamard removed differs). Without AVX-512 (no int4 GEMM in vLLM's CPU build) the run's dequantized
    weights are served with the same transform_config instead."""
    write_model_768(tmp_path)
    run = quantize_model(build_config(str(tmp_path / "fp"), quant={"method": "gptq", "bits": 4, "sym": True,
                                                                   "group_size": 128},
                                      transform={"rotate": "hadamard", "online_rotation": "full"},
                                      calib={"dataset": str(tmp_path / "calib.txt"), "nsamples": 4, "seqlen": 64}),
                         tmp_path / "run", progress=False)
    ckpt = export_vllm(run, tmp_path / "export")
    print(f"serving the {'int4 export' if INT4_CPU else 'dense weights with the export transform_config'}")
    if not INT4_CPU:
        ckpt = dense_with_transform(run, ckpt, tmp_path / "dense")
    prompts = [[5, 17, 33, 8, 90, 41, 12, 7, 66, 3], [100, 2, 14, 59, 23, 77, 31, 9]]
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    # the dense weights are served in float32 (a tight check); the int4 export in bfloat16, where the rounding of the
    # transform's two stages and of vLLM's int4 CPU GEMM moves log-probs of this sharp-logit model by up to 0.14
    # (measured on an AVX-512 Xeon; 4.35 without the online Hadamard)
    dtype, tol = ("bfloat16", 0.25) if INT4_CPU else ("float32", 0.02)
    subprocess.run([VLLM_PYTHON, str(SCRIPT), str(ckpt), str(tmp_path / "p.json"), str(tmp_path / "o.json"),
                    "--max-tokens", "1", "--dtype", dtype], check=True,
                   env={**ENV, "PYTHONPATH": plugin_site(tmp_path / "site")}, timeout=600)
    got = json.loads((tmp_path / "o.json").read_text())
    ref = reference_model(run)
    worst = max(max(abs(a - b) for a, b in zip(o["prompt_logprobs"], prompt_logprobs(ref, p)[0]))
                for p, o in zip(prompts, got))
    for block in ref.model.layers:  # the same weights without the online Hadamard
        block.mlp.down_proj._forward_pre_hooks.clear()
    worst_plain = max(max(abs(a - b) for a, b in zip(o["prompt_logprobs"], prompt_logprobs(ref, p)[0]))
                      for p, o in zip(prompts, got))
    print(f"worst |log-prob difference| {worst:.4f} (without the online Hadamard {worst_plain:.4f}), {dtype}")
    assert worst < tol, worst
    assert worst_plain > 4 * tol, worst_plain


def test_vllm_cpu_serves_w4a4_export(tmp_path):
    """A rotated W4A4 run (symmetric int4 g128 weights, int4 per-token activations, the full online Hadamard of
    order 768) served by vLLM through tbq's plugin (quant_method tbq, its integer-activation scheme; off CUDA the op's
    float64 integer sums, so this runs on any CPU): prompt log-probs match our fake-quantized reference, and would
    not if the activations were left unquantized (the reference without its activation quantization differs)."""
    write_model_768(tmp_path)
    run = quantize_model(build_config(str(tmp_path / "fp"), quant={"method": "rtn", "bits": 4, "group_size": 128},
                                      transform={"rotate": "hadamard", "act_bits": 4},
                                      calib={"dataset": str(tmp_path / "calib.txt"), "nsamples": 2, "seqlen": 32}),
                         tmp_path / "run", progress=False)
    ckpt = export_vllm(run, tmp_path / "export")
    prompts = [[5, 17, 33, 8, 90, 41, 12, 7, 66, 3], [100, 2, 14, 59, 23, 77, 31, 9]]
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    subprocess.run([VLLM_PYTHON, str(SCRIPT), str(ckpt), str(tmp_path / "p.json"), str(tmp_path / "o.json"),
                    "--max-tokens", "1", "--dtype", "float32"], check=True,
                   env={**ENV, "PYTHONPATH": plugin_site(tmp_path / "site")}, timeout=600)
    got = json.loads((tmp_path / "o.json").read_text())

    def worst(model):
        return max(max(abs(a - b) for a, b in zip(o["prompt_logprobs"], prompt_logprobs(model, p)[0]))
                   for p, o in zip(prompts, got))

    ref = reference_model(run)
    with_act_quant = worst(ref)
    for block in ref.model.layers:  # the same weights and Hadamard, activations left unquantized
        for proj in (block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj, block.self_attn.o_proj,
                     block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj):
            hooks = list(proj._forward_pre_hooks)
            proj._forward_pre_hooks.pop(hooks[-1])  # the last hook quantizes the activations
    assert with_act_quant < 0.02, with_act_quant
    assert worst(ref) > 0.1, worst(ref)


PLUGIN_CHECK = """
import os, sys
sys.path.insert(0, sys.argv[1])
import torch
from tbq_kernels.vllm_plugin import register
from vllm.model_executor.kernels.linear import _POSSIBLE_KERNELS
from vllm.model_executor.kernels.linear.mixed_precision import MPLinearLayerConfig
from vllm.platforms import PlatformEnum
from vllm.scalar_type import scalar_types
register()
assert "TbqDequantLinearKernel" not in [k.__name__ for k in _POSSIBLE_KERNELS[PlatformEnum.CUDA]]  # opt-in
os.environ["TBQ_VLLM_KERNELS"] = "1"
register(); register()
names = [k.__name__ for k in _POSSIBLE_KERNELS[PlatformEnum.CUDA]]
assert names.count("TbqDequantLinearKernel") == 1 and names[0] == "TbqDequantLinearKernel", names
ours = _POSSIBLE_KERNELS[PlatformEnum.CUDA][0]
ok, why = ours.can_implement(
    MPLinearLayerConfig((4096, 4096), (4096, 4096), scalar_types.uint4b8, torch.float16, 128, False, False))
assert not ok and "CUDA" in why, (ok, why)
"""


def test_kernel_plugin_registers_first_once_and_declines_off_cuda():
    """The vLLM plugin does nothing unless asked; asked, it is idempotent, puts our kernel ahead of Machete/Marlin,
    and declines layers off CUDA."""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in ENV.items() if k != "TBQ_VLLM_KERNELS"}
    done = subprocess.run([VLLM_PYTHON, "-c", PLUGIN_CHECK, str(root)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
