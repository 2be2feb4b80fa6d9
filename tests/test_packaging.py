"""Issue 19: what `pip install tbq` puts on sys.path. Every installed top-level import name is tbq's own (no
`kernels`, which is also Hugging Face's kernel-hub package, no `cli` or `eval`), the evaluation tools ship in the
wheel and run as `tbq eval TOOL`, and the entry points in pyproject.toml name importable objects."""

import importlib
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tbq_cli.main import EVAL_TOOLS, app

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = {"turboboa_export", "tbq_cli", "tbq_kernels", "tbq_eval"}
runner = CliRunner()


def _can_build() -> str | None:
    """Why a wheel cannot be built here without the network, or None."""
    if importlib.util.find_spec("pip") is None:
        return "pip is not installed in this Python"
    if importlib.util.find_spec("setuptools") is None:
        return "setuptools is not installed (pip wheel --no-build-isolation needs the build backend)"
    version = importlib.metadata.version("setuptools")  # not imported: that would clash with an imported distutils
    if int(version.split(".")[0]) < 77:
        return f"setuptools {version} is older than 77, which pyproject.toml's SPDX license string needs"
    return None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel `pip wheel .` builds from a copy of this checkout (so no build/ or egg-info lands in it)."""
    why = _can_build()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info", "__pycache__",
                                                             "runs", ".pytest_cache"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(root / "dist"), "."], cwd=src, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (whl,) = (root / "dist").glob("tbq-*.whl")
    return zipfile.ZipFile(whl)


def test_wheel_installs_only_tbq_specific_import_names(wheel):
    names = wheel.namelist()
    dist_info = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
    assert len(dist_info) == 1, dist_info
    top = {n.split("/")[0] for n in names} - dist_info
    assert top == TOP_LEVEL, top
    for clash in ("kernels", "cli", "eval", "tests", "benchmarks", "results", "docs"):
        assert clash not in top
    (top_level_txt,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert set(wheel.read(top_level_txt).decode().split()) == TOP_LEVEL


def test_wheel_ships_eval_tools_data_and_entry_points(wheel):
    names = set(wheel.namelist())
    for module in [m for m, _ in EVAL_TOOLS.values()] + ["vllm_logprobs", "vllm_throughput", "vllm_common"]:
        assert f"tbq_eval/{module}.py" in names, module
    assert "tbq_kernels/csrc/decode_gemm.cu" in names
    assert "tbq_kernels/benchmarks/decode_shapes.py" in names
    shipped = {n.rsplit("/", 1)[1] for n in names if n.startswith("turboboa_export/data/hadamard/")}
    assert shipped == {p.name for p in (ROOT / "turboboa_export/data/hadamard").glob("*.txt")}, shipped
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    for line in ("tbq = tbq_cli.main:main", "tbq_kernels = tbq_kernels.vllm_plugin:register",
                 "tbq = turboboa_export.vllm_plugin:register"):
        assert line in text, text


def test_pyproject_entry_points_import():
    """Every object pyproject.toml's scripts and vLLM plugin entry points name is importable and callable."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomllib (3.11+) or tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    values = set(project["scripts"].values()) | set(project["entry-points"]["vllm.general_plugins"].values())
    assert values == {"tbq_cli.main:main", "tbq_kernels.vllm_plugin:register",
                      "turboboa_export.vllm_plugin:register"}, values
    for target in values:
        module, attr = target.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), target
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert set(include) == {f"{name}*" for name in TOP_LEVEL}, include


def test_tbq_eval_lists_the_tools():
    res = runner.invoke(app, ["eval", "--help"])
    assert res.exit_code == 0, res.output
    for name in ("ppl", "throughput", "zeroshot", "report", "vllm-ppl", "protocol", "random-checkpoint"):
        assert name in res.output, name
    assert "eval" in runner.invoke(app, ["--help"]).output


def test_tbq_eval_forwards_to_the_tools_own_parser():
    """`tbq eval ppl --help` is tbq_eval.ppl's argparse help (its own options), not Typer's."""
    res = runner.invoke(app, ["eval", "ppl", "--help"])
    assert res.exit_code == 0, res.output
    assert "usage: tbq eval ppl" in res.output and "--max-windows" in res.output and "--backend" in res.output
    res = runner.invoke(app, ["eval", "throughput", "offline", "--help"])
    assert res.exit_code == 0 and "usage: tbq eval throughput offline" in res.output and "--batch-sizes" in res.output
    res = runner.invoke(app, ["eval", "report", "--protocol", "/nonexistent/p.jsonl", "-o", "/nonexistent/out"])
    assert res.exit_code != 0 and "/nonexistent/p.jsonl does not exist" in str(res.exception or res.output)


def test_python_m_and_worker_scripts_still_run():
    """`python -m tbq_eval.report` still works, and the vLLM worker scripts, run as files from the package folder,
    find their sibling vllm_common (their --help exits before vLLM is imported)."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "tbq_eval.report", "--help"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and "--protocol" in done.stdout, done.stderr[-2000:]
    from tbq_eval.ppl import LOGPROBS_SCRIPT
    from tbq_eval.throughput import WORKER

    for script in (LOGPROBS_SCRIPT, WORKER):
        assert script.parent == ROOT / "tbq_eval"
        done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin"}, cwd="/")
        assert done.returncode == 0 and "usage:" in done.stdout, done.stderr[-2000:]
