#!/usr/bin/env bash
# Every GPU number of the closing note and the README, as one detached job on the lent GPU machine:
#   1. quant_speed: one Llama-3-8B-shaped block, 128 x 2048 tokens, each method (alone on the GPU);
#   2. SmolLM2-135M under algorithm.md section 8 (+ C4 text): RTN, GPTQ, BoA, TurboBoA at W2/W3 per-channel
#      and W4/W3 g64, in two concurrent workers (per-channel; grouped then rotated W4A4/W4A16);
#   3. as soon as vLLM and the TurboBoA W4 g64 run exist: export it, and compare vLLM's perplexity (prompt
#      log-probs, all held-out windows) with ours (issue 4);
#   4. after the protocol: vLLM offline decode throughput, fp16 vs the TurboBoA W4 g64 export, batch 1/16/128.
# Needs tbq's dependencies on PYTHONPATH; waits for /tmp/smol_ready (model wheel installed) and
# /tmp/vllm_ready (GPU vLLM bundle unpacked) before the stages that need them. Results in ${RES:-/tmp/res}.
set -u
RES=${RES:-/tmp/res}
mkdir -p "$RES"
export TBQ_CACHE=${TBQ_CACHE:-/tmp/tbqcache} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLLM_USE_FLASHINFER_SAMPLER=0 \
  VLLM_NO_USAGE_STATS=1 TOKENIZERS_PARALLELISM=false
stage() { echo "$(date +%T) $*" >> "$RES/stages.txt"; }
wait_for() { while [ ! -e "$1" ]; do sleep 2; done; }

stage speed
python3 benchmarks/quant_speed.py --runs "${SPEED_RUNS:-gptq,turboboa N=16,turboboa N=32,turboboa N=4,boa,turboboa N=1}" \
  --json "$RES/quant_speed.json" > "$RES/quant_speed.txt" 2>&1

wait_for /tmp/smol_ready
stage protocol
python3 -m eval.protocol --fp --c4 --out "$RES/channel" \
  --runs "${CHANNEL_RUNS:-turboboa:w3,boa:w3,gptq:w3,rtn:w3,turboboa:w2,boa:w2,gptq:w2,rtn:w2}" > "$RES/channel.txt" 2>&1 &
(python3 -m eval.protocol --c4 --out "$RES/grouped" \
  --runs "${GROUPED_RUNS:-turboboa:w4-g64,gptq:w4-g64,rtn:w4-g64,boa:w4-g64,turboboa:w3-g64,gptq:w3-g64,rtn:w3-g64,boa:w3-g64}" \
  > "$RES/grouped.txt" 2>&1
 python3 -m eval.protocol --c4 --out "$RES/w4a4" \
  --runs "${W4A4_RUNS:-turboboa:w4:rot:a4,gptq:w4:rot:a4,rtn:w4:rot:a4,turboboa:w4:a4,turboboa:w4:rot:a4:kv4,turboboa:w4:rot,gptq:w4:rot,rtn:w4:rot}" \
  > "$RES/w4a4.txt" 2>&1) &

wait_for /tmp/vllm_ready
wait_for "$RES/grouped/turboboa-w4-g64/run.json"
stage vllm-ppl
python3 -m cli.main export "$RES/grouped/turboboa-w4-g64" -o /tmp/exp/turboboa-w4-g64 > "$RES/vllm_ppl.txt" 2>&1
TBQ_VLLM_GPU_MEMORY=0.25 python3 -m eval.vllm_ppl /tmp/exp/turboboa-w4-g64 "$RES/grouped/turboboa-w4-g64" \
  --vllm-python python3 --seqlen 2048 --windows 0 --json "$RES/vllm_ppl.json" >> "$RES/vllm_ppl.txt" 2>&1

wait
stage throughput
fp=$(python3 -c "from turboboa_export.models import resolve_model; print(resolve_model('smollm2-135m'))")
python3 -m eval.throughput offline "$fp" /tmp/exp/turboboa-w4-g64 --labels "fp16,turboboa-w4-g64" \
  --vllm-python python3 --json "$RES/throughput.json" >> "$RES/throughput.txt" 2>&1
python3 -m eval.report --protocol "$RES/channel/results.jsonl" "$RES/grouped/results.jsonl" "$RES/w4a4/results.jsonl" \
  --throughput "$RES/throughput.json" -o "$RES/report" --official > "$RES/report.txt" 2>&1
stage done
touch "$RES/done"
