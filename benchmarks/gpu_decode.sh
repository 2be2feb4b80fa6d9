#!/usr/bin/env bash
# GPU job for tbq's decode kernel (issue 17) and the W4A4/W4A8 activation side (issue 15), on one H200. Writes under
# $RES.
# Stages, in order (STAGES="a b" runs only those):
#   cuda_tests: the decode kernel, the integer-activation paths and the online Hadamards against float64
#               (tests/test_decode_gemm.py, test_int_act.py, test_hadamard_quant.py, test_hadamard_mix.py);
#   layers:     per-layer time against cuBLAS fp16, Marlin, Machete, Humming (tbq_kernels.benchmarks.decode_shapes);
#   decode:     vLLM tok/s, LLaMA-2-7B shapes, W4/W3/W2 g128, tbq's kernel against stock (int_act_serving --set decode);
#   int_act_ops: the activation ops of a W4A4 layer against stock W8A8's, per op (tbq_kernels.benchmarks.int_act_ops);
#   int_act:    vLLM tok/s, Llama-3-8B shapes, decode at batch 1/16/128 and prefill 8 x 2048: W4A4/W4A8 channel
#               against fp16, stock W8A8 and W4A16 Marlin (--set int_act; INT_ACT_ONLY picks the rows;
#               TBQ_VLLM_KERNELS=1 only matters to the "W4A16 g128 (tbq decode)" row).
# Needs vLLM 0.25.1 and its deps (humming-kernels for W3/W2) on PYTHONPATH and tbq's plugins visible to vLLM
# (docs/gpu.md: the entry-point-only dist-info).
set -u
cd "$(dirname "$0")/.."
RES=${RES:-/tmp/res}
CK=${CK:-/tmp/ck}
mkdir -p "$RES" "$CK"
export TBQ_CACHE=${TBQ_CACHE:-/tmp/tbqcache} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLLM_USE_FLASHINFER_SAMPLER=0 \
  VLLM_NO_USAGE_STATS=1 TOKENIZERS_PARALLELISM=false CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
stage() { echo "$(date +%T) $*" >> "$RES/stages.txt"; }

cuda_tests() {
  python3 -m pytest -q -p no:cacheprovider tests/test_decode_gemm.py tests/test_int_act.py tests/test_hadamard_quant.py \
    tests/test_hadamard_mix.py > "$RES/cuda_tests.txt" 2>&1
}
layers() {
  python3 -m tbq_kernels.benchmarks.decode_shapes ${LAYERS_ARGS:-} --json "$RES/decode_shapes.json" \
    > "$RES/decode_shapes.txt" 2>&1
}
decode() {
  TBQ_VLLM_KERNELS=1 python3 benchmarks/int_act_serving.py --set decode --shape llama2-7b --batch-sizes 1,16 --prefill "" \
    --ckpts "$CK" --vllm-python python3 ${DECODE_ARGS:-} --json "$RES/decode_serving.json" > "$RES/decode_serving.txt" 2>&1
}
int_act_ops() {
  python3 -m tbq_kernels.benchmarks.int_act_ops --json "$RES/int_act_ops.json" > "$RES/int_act_ops.txt" 2>&1
}
int_act() {
  TBQ_VLLM_KERNELS=1 python3 benchmarks/int_act_serving.py --set int_act --shape llama3-8b --batch-sizes 1,16,128 \
    --prefill 8x2048 --ckpts "$CK" --vllm-python python3 \
    --only "${INT_ACT_ONLY:-fp16,W8A8-int8 (stock),W4A16 g128 Marlin,W4A8 channel (tbq),W4A4 channel (tbq)}" \
    --json "$RES/int_act_serving.json" > "$RES/int_act_serving.txt" 2>&1
}

for s in ${STAGES:-cuda_tests layers decode int_act_ops int_act}; do stage "$s"; "$s"; done
stage done
touch "$RES/done"
