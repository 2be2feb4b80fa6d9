#!/usr/bin/env bash
# The GPU numbers of the rotation-serving work (docs/gpu.md says how to set the machine up), as one detached job:
#   1. cuda_tests: the vLLM plugin's CUDA path (Hadacore or GEMM + the m x m product) against float64;
#   then two lanes at once, each on its own GPU (SMOL_GPU, SERVE_GPU; both 0 on a one-GPU machine):
#   2. protocol: SmolLM2-135M TurboBoA, rotated, full vs block:$BLOCK online Hadamard, W4 g64 (W4A16) and
#      per-channel W4A4, algorithm.md section 8 (two workers at once: seconds are upper bounds); then
#      vllm_ppl: the W4 g64 runs exported (full: quant_method tbq, through the plugin; block: stock vLLM, plugin
#      not loaded), perplexity from vLLM's prompt log-probs over all held-out windows beside tbq_eval.ppl's;
#   3. checkpoint: a random-weight Llama-3-8B-shape W4 g128 export (CPU); then serving:
#      benchmarks/rotation_serving.py, unrotated vs full vs block:$BLOCK, vLLM decode tok/s at batch 1/16/128
#      (128 prompt, 128 output tokens);
#   4. tp (TP > 1 when TP is set): the block export's prompt log-probs at TP=$TP against TP=1 and its throughput;
#      the full export at TP=$TP, refused or served.
# Needs this checkout and tbq's dependencies on PYTHONPATH, vLLM importable, and tbq's plugin entry point visible
# to importlib.metadata. STAGES picks stages (default all, in order). Results in ${RES:-/tmp/res}; done at
# $RES/done.
set -u
RES=${RES:-/tmp/res}
CK=${CK:-/tmp/ck}
BLOCK=${BLOCK:-512}
mkdir -p "$RES" "$CK"
export TBQ_CACHE=${TBQ_CACHE:-/tmp/tbqcache} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLLM_USE_FLASHINFER_SAMPLER=0 \
  VLLM_NO_USAGE_STATS=1 TOKENIZERS_PARALLELISM=false CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
stage() { echo "$(date +%T) $*" >> "$RES/stages.txt"; }

cuda_tests() {
  python3 -m pytest -q -p no:cacheprovider tests/test_online_rotation.py -k "cuda or plans" > "$RES/cuda_tests.txt" 2>&1
}
protocol() {
  export CUDA_VISIBLE_DEVICES=${SMOL_GPU:-0}
  python3 -m tbq_eval.protocol --out "$RES/w4g64" ${PROTO_ARGS:-} \
    --runs "turboboa:w4-g64:rot,turboboa:w4-g64:rot:block$BLOCK" > "$RES/w4g64.txt" 2>&1 &
  python3 -m tbq_eval.protocol --out "$RES/w4a4" ${PROTO_ARGS:-} \
    --runs "turboboa:w4:rot:a4,turboboa:w4:rot:block$BLOCK:a4" > "$RES/w4a4.txt" 2>&1 &
  wait
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
vllm_ppl() {
  export CUDA_VISIBLE_DEVICES=${SMOL_GPU:-0}
  for form in rot "rot-block$BLOCK"; do
    run="$RES/w4g64/turboboa-w4-g64-$form"
    python3 -c "import sys; from turboboa_export.export.compressed_tensors import export_vllm; \
export_vllm(sys.argv[1], sys.argv[2], overwrite=True)" "$run" "$CK/export-$form" >> "$RES/vllm_ppl.txt" 2>&1
    plugins=$([ "$form" = rot ] && echo tbq || echo none)  # block:$BLOCK: stock vLLM, tbq's plugin not loaded
    VLLM_PLUGINS=$plugins python3 -m tbq_eval.vllm_ppl "$CK/export-$form" "$run" --vllm-python python3 --seqlen 2048 \
      --windows 0 ${VLLM_PPL_ARGS:-} --json "$RES/vllm_ppl-$form.json" >> "$RES/vllm_ppl.txt" 2>&1
  done
}
tp() {
  unset CUDA_VISIBLE_DEVICES
  python3 benchmarks/rotation_serving.py --shape "${SHAPE:-llama3-8b}" --block "$BLOCK" --ckpts "$CK" \
    --vllm-python python3 --skip-throughput --tp "$TP" --json "$RES/rotation_tp.json" > "$RES/rotation_tp.txt" 2>&1
}
lane() { for s in "$@"; do stage "$s"; "$s"; done; }

if [ -n "${STAGES:-}" ]; then lane $STAGES; else
  lane cuda_tests
  lane protocol vllm_ppl &
  lane checkpoint serving &
  wait
  [ -n "${TP:-}" ] && lane tp
fi
stage done
touch "$RES/done"
