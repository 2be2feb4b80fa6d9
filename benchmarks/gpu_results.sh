#!/usr/bin/env bash
# Every GPU number of the closing note and the README, as one detached job on the lent GPU machine. Stages that
# time things run alone on the GPU:
#   1. the CUDA tests (kernels, GPU precision paths, graphed GPTQ), then quant_speed: one Llama-3-8B-shaped block,
#      128 x 2048 tokens, each method;
#   2. (vLLM needed) tbq_kernels.benchmarks.linear_shapes: cuBLAS fp16, tbq's kernel, Machete, Marlin on Llama-2-7B and
#      Llama-3-8B linear shapes; the sweep writes tbq_kernels/tuned_configs.json, which stage 4 then uses;
#   3. SmolLM2-135M under algorithm.md section 8 (+ C4 text) in parallel workers (so their seconds are upper
#      bounds); meanwhile the CPU writes random-weight LLaMA-2-7B checkpoints (fp16; int4 g128 as exported);
#   4. vLLM offline decode throughput, batch 1/16/128: LLaMA-2-7B fp16 vs the int4 export on tbq's kernel plugin,
#      Machete and Marlin; SmolLM2 fp16 vs the TurboBoA W4 g64 export (plugin, Machete); then the report;
#   5. (vLLM needed) vllm_rot: the rotated TurboBoA W4 g64 run (from a protocol worker's W4A4_RUNS) exported with
#      its online Hadamard as a transform_config, served by vLLM: perplexity from its log-probs beside ours.
# Needs tbq's dependencies and its dist-info (for the vLLM plugin's entry point) on PYTHONPATH, with this checkout
# first; waits for /tmp/vllm_ready (GPU vLLM bundle unpacked) and /tmp/smol_ready (model wheel installed).
# Run lists: SPEED_RUNS, CHANNEL_RUNS, GROUPED_RUNS, GROUPED2_RUNS, W4A4_RUNS; STAGES picks stages (default all,
# in order); a stage waits for protocol workers of an earlier invocation. Results in ${RES:-/tmp/res}.
set -u
RES=${RES:-/tmp/res}
CK=${CK:-/tmp/ck}
mkdir -p "$RES" "$CK"
export TBQ_CACHE=${TBQ_CACHE:-/tmp/tbqcache} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLLM_USE_FLASHINFER_SAMPLER=0 \
  VLLM_NO_USAGE_STATS=1 TOKENIZERS_PARALLELISM=false
stage() { echo "$(date +%T) $*" >> "$RES/stages.txt"; }
wait_for() { while [ ! -e "$1" ]; do sleep 2; done; }
quiet() { while pgrep -f "tbq_eval.protocol|tbq_eval.random_checkpoint" > /dev/null; do sleep 5; done; }

gpu_tests() {
  python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_gpu_precision.py tests/test_gptq.py \
    > "$RES/gpu_tests.txt" 2>&1
}
speed() {
  python3 benchmarks/quant_speed.py --runs "${SPEED_RUNS:-gptq,turboboa N=16,turboboa N=32,turboboa N=4,boa}" \
    --json "$RES/quant_speed.json" > "$RES/quant_speed.txt" 2>&1
}
linear_shapes() {
  wait_for /tmp/vllm_ready
  python3 -m tbq_kernels.benchmarks.linear_shapes --sweep --write-tuned --json "$RES/linear_shapes.json" \
    > "$RES/linear_shapes.txt" 2>&1
  cp tbq_kernels/tuned_configs.json "$RES/"
}
protocol() {
  wait_for /tmp/smol_ready
  worker channel "${CHANNEL_RUNS:-turboboa:w2,boa:w2}"
  worker grouped "${GROUPED_RUNS:-turboboa:w4-g64,boa:w4-g64,turboboa:w3-g64,gptq:w3-g64}"
  worker grouped2 "${GROUPED2_RUNS:-rtn:w3-g64,boa:w3-g64,rtn:w4:rot,gptq:w4:rot,turboboa:w4:rot}"
  worker w4a4 "${W4A4_RUNS:-turboboa:w4:rot:a4,gptq:w4:rot:a4,rtn:w4:rot:a4,turboboa:w4:a4,turboboa:w4:rot:a4:kv4}"
  wait
}
worker() {  # NAME RUNS: one protocol worker in the background
  python3 -m tbq_eval.protocol --c4 --out "$RES/$1" --runs "$2" > "$RES/$1.txt" 2>&1 &
}
checkpoints() {  # CPU work: random-weight LLaMA-2-7B, fp16 and int4 g128 as exported
  [ -e "$CK/llama2-7b-w4g128" ] || python3 -m tbq_eval.random_checkpoint llama2-7b --format vllm -o "$CK/llama2-7b-w4g128" \
    >> "$RES/checkpoints.txt" 2>&1
  [ -e "$CK/llama2-7b-fp16" ] || python3 -m tbq_eval.random_checkpoint llama2-7b --format fp16 -o "$CK/llama2-7b-fp16" \
    >> "$RES/checkpoints.txt" 2>&1
}
throughput() {
  wait_for /tmp/vllm_ready
  checkpoints
  export VLLM_DISABLE_COMPILE_CACHE=1  # one checkpoint under several kernels: never reuse another run's graphs
  export TBQ_VLLM_KERNELS=1  # the plugin is opt-in; the Machete/Marlin runs disable it by name
  python3 -m tbq_eval.throughput offline "$CK/llama2-7b-fp16" "$CK/llama2-7b-w4g128" "$CK/llama2-7b-w4g128" \
    "$CK/llama2-7b-w4g128" --labels fp16,int4-tbq-kernel,int4-machete,int4-marlin \
    --disabled-kernels ";;TbqDequantLinearKernel;TbqDequantLinearKernel,MacheteLinearKernel" \
    --vllm-python python3 --json "$RES/throughput_llama2.json" > "$RES/throughput_llama2.txt" 2>&1
  python3 -m tbq_cli.main export "$RES/grouped/turboboa-w4-g64" -o "$CK/turboboa-w4-g64" > "$RES/throughput.txt" 2>&1
  fp=$(python3 -c "from turboboa_export.models import resolve_model; print(resolve_model('smollm2-135m'))")
  python3 -m tbq_eval.throughput offline "$fp" "$CK/turboboa-w4-g64" "$CK/turboboa-w4-g64" \
    --labels fp16,turboboa-w4-g64-tbq-kernel,turboboa-w4-g64-stock --disabled-kernels ";;TbqDequantLinearKernel" \
    --vllm-python python3 --json "$RES/throughput.json" >> "$RES/throughput.txt" 2>&1
}
vllm_rot() {
  wait_for /tmp/vllm_ready
  python3 -m tbq_cli.main export "$RES/w4a4/turboboa-w4-g64-rot" -o "$CK/turboboa-w4-g64-rot" > "$RES/vllm_rot.txt" 2>&1
  python3 -m tbq_eval.vllm_ppl "$CK/turboboa-w4-g64-rot" "$RES/w4a4/turboboa-w4-g64-rot" --vllm-python python3 \
    --seqlen 2048 --windows 0 --json "$RES/vllm_rot_ppl.json" >> "$RES/vllm_rot.txt" 2>&1
}
report() {
  cat "$RES"/{channel,grouped,grouped2,w4a4}/results.jsonl > "$RES/protocol.jsonl" 2>/dev/null
  python3 -m tbq_eval.report --protocol "$RES/protocol.jsonl" --throughput "$RES/throughput.json" -o "$RES/report" \
    --official > "$RES/report.txt" 2>&1
}

for s in ${STAGES:-gpu_tests speed linear_shapes protocol throughput report vllm_rot}; do
  quiet
  stage "$s"
  "$s"
done
stage done
touch "$RES/done"
