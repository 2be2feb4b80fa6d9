#!/usr/bin/env bash
# The GPU numbers of the serving work (docs/gpu.md says how to set the machine up), as one detached job. Stages:
#   cuda_tests: the plugin's CUDA paths against float64 (online Hadamard: Hadacore or GEMM + tbq's Triton mix; the
#       W4A4/W4A8 channel-wise CUTLASS path);
#   protocol: SmolLM2-135M TurboBoA under algorithm.md section 8, the runs in $PROTO_RUNS (default: rotated W4 g64
#       full vs block:$BLOCK, W4A4 and W4A8 per channel); then vllm_ppl: the runs in $PPL_RUNS exported, perplexity
#       from vLLM's prompt log-probs over all held-out windows beside tbq_eval.ppl's (quant_method tbq exports
#       through the plugin; stock ones with the plugin not loaded);
#   checkpoint + serving: a random-weight Llama-3-8B-shape W4 g128 export; benchmarks/rotation_serving.py,
#       unrotated vs full vs block:$BLOCK, vLLM decode tok/s at batch 1/16/128 (128 prompt, 128 output tokens);
#   int_act: benchmarks/int_act_serving.py, fp16 / stock W8A8 / W4A16 Marlin / W4A8 / W4A4, decode and prefill;
#   tp (TP > 1 when TP is set): the block export's prompt log-probs at TP=$TP against TP=1 and its throughput; the
#       full export at TP=$TP, refused or served.
# Default: cuda_tests, then two lanes at once, each on its own GPU (SMOL_GPU, SERVE_GPU; both 0 on a one-GPU
# machine): protocol + vllm_ppl, and checkpoint + serving + int_act; then tp. STAGES="a b" runs those stages in
# order instead. Needs this checkout and tbq's dependencies on PYTHONPATH, vLLM importable, and tbq's plugin entry
# point visible to importlib.metadata. Results in ${RES:-/tmp/res}; done at $RES/done.
set -u
RES=${RES:-/tmp/res}
CK=${CK:-/tmp/ck}
BLOCK=${BLOCK:-512}
PROTO_RUNS=${PROTO_RUNS:-turboboa:w4-g64:rot,turboboa:w4-g64:rot:block$BLOCK,turboboa:w4:rot:a4,turboboa:w4:rot:a8}
PPL_RUNS=${PPL_RUNS:-turboboa-w4-g64-rot turboboa-w4-g64-rot-block$BLOCK turboboa-w4-rot-a4 turboboa-w4-rot-a8}
mkdir -p "$RES" "$CK"
export TBQ_CACHE=${TBQ_CACHE:-/tmp/tbqcache} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLLM_USE_FLASHINFER_SAMPLER=0 \
  VLLM_NO_USAGE_STATS=1 TOKENIZERS_PARALLELISM=false CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
stage() { echo "$(date +%T) $*" >> "$RES/stages.txt"; }

cuda_tests() {
  python3 -m pytest -q -p no:cacheprovider tests/test_online_rotation.py tests/test_int_act.py \
    tests/test_hadamard_mix.py tests/test_hadamard_quant.py -k "cuda or plans" > "$RES/cuda_tests.txt" 2>&1
}
protocol() {
  export CUDA_VISIBLE_DEVICES=${SMOL_GPU:-0}
  python3 -m tbq_eval.protocol --out "$RES/protocol" ${PROTO_ARGS:-} --runs "$PROTO_RUNS" > "$RES/protocol.txt" 2>&1
}
checkpoint() {
  python3 -c "import sys; from tbq_eval.random_checkpoint import write_random; \
write_random('${SHAPE:-llama3-8b}', sys.argv[1], 'vllm', 4, 128, True)" "$CK/${SHAPE:-llama3-8b}-w4g128" \
    > "$RES/checkpoint.txt" 2>&1
}
serving() {
  export CUDA_VISIBLE_DEVICES=${SERVE_GPU:-0}
  python3 benchmarks/rotation_serving.py --shape "${SHAPE:-llama3-8b}" --block "$BLOCK" --ckpts "$CK" \
    --vllm-python python3 ${SERVING_ARGS:-} --json "$RES/rotation_serving.json" > "$RES/rotation_serving.txt" 2>&1
}
int_act() {
  export CUDA_VISIBLE_DEVICES=${SERVE_GPU:-0}
  python3 benchmarks/int_act_serving.py --shape "${SHAPE:-llama3-8b}" --ckpts "$CK/int" --vllm-python python3 \
    ${INT_ACT_ARGS:-} --json "$RES/int_act_serving.json" > "$RES/int_act_serving.txt" 2>&1
}
vllm_ppl() {
  export CUDA_VISIBLE_DEVICES=${SMOL_GPU:-0}
  for name in $PPL_RUNS; do
    run="$RES/protocol/$name"
    python3 -c "import sys; from turboboa_export.export.compressed_tensors import export_vllm; \
export_vllm(sys.argv[1], sys.argv[2], overwrite=True)" "$run" "$CK/export-$name" >> "$RES/vllm_ppl.txt" 2>&1
    method=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['quantization_config']['quant_method'])" \
      "$CK/export-$name/config.json")
    plugins=$([ "$method" = tbq ] && echo tbq || echo none)  # stock exports: stock vLLM, tbq's plugin not loaded
    VLLM_PLUGINS=$plugins python3 -m tbq_eval.vllm_ppl "$CK/export-$name" "$run" --vllm-python python3 --seqlen 2048 \
      --windows 0 ${VLLM_PPL_ARGS:-} --json "$RES/vllm_ppl-$name.json" >> "$RES/vllm_ppl.txt" 2>&1
  done
}
tp() {
  unset CUDA_VISIBLE_DEVICES
  python3 benchmarks/rotation_serving.py --shape "${SHAPE:-llama3-8b}" --block "$BLOCK" --ckpts "$CK" \
    --vllm-python python3 --tp "$TP" --json "$RES/rotation_tp.json" > "$RES/rotation_tp.txt" 2>&1
}
lane() { for s in "$@"; do stage "$s"; "$s"; done; }

if [ -n "${STAGES:-}" ]; then lane $STAGES; else
  lane cuda_tests
  lane protocol vllm_ppl &
  lane checkpoint serving int_act &
  wait
  [ -n "${TP:-}" ] && lane tp
fi
stage done
touch "$RES/done"
