import pytest
import torch

from .tiny import make_model_dir, write_text


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {kind: make_model_dir(root, kind) for kind in ("llama", "mistral", "qwen2", "qwen3", "gemma3")}


@pytest.fixture(scope="session")
def calib_text(tmp_path_factory):
    return write_text(tmp_path_factory.mktemp("text"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
