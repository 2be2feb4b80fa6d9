"""Streaming quantization: a model read block by block from its safetensors gives the parts ``from_pretrained``
gives and exactly the bits of the same model quantized from memory, while its peak host memory does not grow
with the number of blocks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from turboboa_export import quantize
from turboboa_export.config import build_config
from turboboa_export.errors import TbqError
from turboboa_export.pipeline.sequential import quantize_model
from turboboa_export.pipeline.weights import META, open_model, outer_paths

from .test_pipeline import block_tensors
from .tiny import make_tokenizer


@pytest.fixture(scope="module")
def half_models(tiny_models, tmp_path_factory):
    """The tiny Llama in bf16 as several shards with an index; the tiny Qwen3 (tied embeddings) in fp16."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("half")
    out = {}
    for kind, dtype, shard in (("llama", torch.bfloat16, "100KB"), ("qwen3", torch.float16, "1GB")):
        path = root / f"{kind}-{dtype}"
        AutoModelForCausalLM.from_pretrained(tiny_models[kind], dtype=dtype).save_pretrained(path, max_shard_size=shard)
        AutoTokenizer.from_pretrained(tiny_models[kind]).save_pretrained(path)
        out[kind] = path
    assert (out["llama"] / "model.safetensors.index.json").is_file()
    return out


def model_dirs(tiny_models, half_models):
    return {"llama fp32": tiny_models["llama"], "gemma3 fp32 tied": tiny_models["gemma3"],
            "llama bf16 sharded": half_models["llama"], "qwen3 fp16 tied": half_models["qwen3"]}


@pytest.mark.parametrize("name", ["llama fp32", "gemma3 fp32 tied", "llama bf16 sharded", "qwen3 fp16 tied"])
def test_streamed_parts_are_what_from_pretrained_loads(tiny_models, half_models, name):
    """Every parameter (dtype and value, tied ones from the one stored tensor) and buffer (rotary frequencies,
    Gemma's embedding scale) of the skeleton filled part by part equals from_pretrained's; a part is on the meta
    device before it is loaded and after it is released."""
    from transformers import AutoModelForCausalLM

    path = model_dirs(tiny_models, half_models)[name]
    want = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    model, weights = open_model(path)
    assert all(p.device == META for p in model.parameters())
    blocks = [weights.load(model, f"model.layers.{i}") for i in range(len(model.model.layers))]
    for path_ in outer_paths(model, "model.layers"):
        weights.load(model, path_)
    got, ref = model.state_dict(), want.state_dict()
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k]), k
    assert dict(model.named_buffers()).keys() == dict(want.named_buffers()).keys()
    for (k, a), b in zip(model.named_buffers(), want.buffers()):
        assert torch.equal(a, b), k
    weights.release(blocks[0])
    assert all(p.device == META for p in blocks[0].parameters())


def rest_tensors(run: Path) -> dict:
    return load_file(run / "rest.safetensors")


@pytest.mark.parametrize("kind,transform", [("llama", {}), ("qwen3", {"rotate": "hadamard", "act_bits": 8})])
def test_streamed_run_gives_the_in_memory_bits(half_models, calib_text, tmp_path, kind, transform):
    """The half-precision model quantized from its folder (streamed) and from memory (loaded whole by
    transformers, the way tbq loaded every model before streaming) give bit-equal codes, scales, zeros and
    untouched tensors: with bf16 shards, and with an fp16 tied model rotated part by part (lm_head from the
    unrotated embedding, the final norm fused into it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = dict(method="turboboa", bits=3, group_size=32, sym=True, dataset=str(calib_text), nsamples=4,
                    seqlen=48, device="cpu", **transform)
    streamed = quantize(str(half_models[kind]), output=tmp_path / "streamed", **settings).path
    model = AutoModelForCausalLM.from_pretrained(half_models[kind], dtype="auto")
    in_memory = quantize(model, output=tmp_path / "memory", tokenizer=AutoTokenizer.from_pretrained(half_models[kind]),
                         **settings).path
    for a, b in ((block_tensors(streamed), block_tensors(in_memory)), (rest_tensors(streamed), rest_tensors(in_memory))):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_folder_without_safetensors_is_one_line_error(tiny_models, calib_text, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    for f in tiny_models["llama"].iterdir():
        if f.suffix != ".safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    cfg = build_config(str(folder), calib={"dataset": str(calib_text), "nsamples": 2, "seqlen": 32})
    with pytest.raises(TbqError, match="has no model.safetensors .*never pickled"):
        quantize_model(cfg, tmp_path / "run", progress=False)
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {"lm_head.weight": "gone.safetensors"}}')
    with pytest.raises(TbqError, match="names gone.safetensors, which is not in the folder"):
        quantize_model(cfg, tmp_path / "run", progress=False)


HIDDEN, INTER = 512, 2048
BLOCK_BYTES = 4 * (4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTER + 2 * HIDDEN)  # float32 q, k, v, o, MLP, norms
PEAK_RSS = """
import sys
from turboboa_export.config import build_config
from turboboa_export.pipeline.sequential import quantize_model
cfg = build_config(sys.argv[1], quant={"method": "rtn"}, calib={"dataset": sys.argv[2], "nsamples": 2, "seqlen": 32},
                   device="cpu")
quantize_model(cfg, sys.argv[3], progress=False)
print(next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")))
"""


def write_blocks_model(path: Path, blocks: int) -> Path:
    """A random float32 Llama of ``blocks`` blocks of BLOCK_BYTES each (a 160-token vocabulary: small outside them)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=160, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=blocks,
                      num_attention_heads=8, num_key_value_heads=8, head_dim=64, max_position_embeddings=256,
                      tie_word_embeddings=False, dtype="float32")
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in AutoModelForCausalLM.from_config(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    path.mkdir()
    save_file({k: torch.ones(s) if "norm" in k else 0.02 * torch.randn(s, generator=g) for k, s in shapes.items()},
              path / "model.safetensors")
    cfg.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_peak_host_memory_does_not_grow_with_blocks(calib_text, tmp_path):
    """Peak RSS (VmHWM) of quantizing 3 and 7 blocks of 17 MB: streamed, the 4 added blocks add less than half a
    block each (the block being read ahead may or may not be in memory at the peak: up to two blocks of jitter;
    loading the whole model added about two blocks per block). glibc is told to return every freed allocation
    above 64 KB to the system, so that the measure is what tbq keeps, not what the allocator caches."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    procs = {n: subprocess.Popen([sys.executable, "-c", PEAK_RSS, str(write_blocks_model(tmp_path / f"m{n}", n)),
                                  str(calib_text), str(tmp_path / f"run{n}")], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for n in (3, 7)}
    peak = {}
    for n, p in procs.items():
        out, err = p.communicate()
        assert p.returncode == 0, err[-2000:]
        peak[n] = int(out.split()[-1])
    per_block = (peak[7] - peak[3]) / 4
    assert per_block < BLOCK_BYTES / 2, (peak, BLOCK_BYTES)


@pytest.mark.gpu
def test_activations_in_host_memory_give_the_same_bits(half_models, calib_text, tmp_path, monkeypatch):
    """On a GPU, calibration activations kept in pinned host memory (as when they do not fit) give the bits of
    activations kept on the GPU: each sequence runs on the GPU, and the statistics' half-precision products follow
    the GPU copy of the bf16 activations."""
    from turboboa_export.pipeline import sequential

    settings = dict(method="turboboa", bits=3, group_size=32, sym=True, dataset=str(calib_text), nsamples=4,
                    seqlen=48, device="cuda")
    on_gpu = quantize(str(half_models["llama"]), output=tmp_path / "gpu", **settings).path
    monkeypatch.setattr(sequential, "activation_home", lambda device, inputs: torch.device("cpu"))
    on_host = quantize(str(half_models["llama"]), output=tmp_path / "host", **settings).path
    a, b = block_tensors(on_gpu), block_tensors(on_host)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
