#!/bin/bash
# Issue 20 table, set-up call 7 of 7 (docs/gpu.md): join the parts copied to /tmp/b, install, materialize, start the JOBS below detached
REPO=$PWD
mkdir -p /tmp/res && cd /tmp/b && cat p00 p01 p02 p03 p04 p05 p06 | tar x || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site whl/*.whl > /tmp/res/pip.log 2>&1 || { tail -5 /tmp/res/pip.log; exit 1; }
rm -rf /tmp/b/whl; cp "$REPO/docs/gpu-calib/poll.sh" /tmp/poll.sh
cp -r "$REPO" /tmp/repo && cd /tmp/repo && rm -rf .device-carry
export PYTHONPATH=/tmp/site:/tmp/repo TBQ_CACHE=/tmp/tbqcache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 -c "import transformers, torch; print('transformers', transformers.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())"
python3 -c "from turboboa_export.models import materialize_builtin as m; print(m('gemma3-270m'))" > /tmp/res/mat-g.log 2>&1 &
python3 -c "from turboboa_export.models import materialize_builtin as m; print(m('smollm2-135m'))" > /tmp/res/mat-s.log 2>&1 &
wait
tail -c 300 /tmp/res/mat-g.log; tail -c 300 /tmp/res/mat-s.log
# session 15: Gemma's BoA and TurboBoA cells again, with q/k H_in weighted by the q/k norms' 1/rms^2 (GPTQ and RTN do
# not use it, SmolLM2 has no q/k norms: their cells at HEAD stand, results/calib-table-h200-s14), then BoA and
# TurboBoA at calibration seeds 1 and 2 on Gemma W4 16 x 512 and W3 128 x 2048 beside GPTQ, then SmolLM2's cells
# not yet run at HEAD; on two GPUs the jobs are dealt to them in turn, 16 lanes a GPU
G=gemma3-270m S=smollm2-135m J=""
add() { for p in $3; do J="$J${J:+,}$1/$2/$p"; done; }
gemma() { add $G $2 "$1:w3 $1:w3-g64 $1:w4 $1:w4-g128"; }
smol() { add $S $2 "$1:w3 $1:w3-g64 $1:w4 $1:w4-g64"; }
gemma boa 128x2048; gemma boa 16x512; gemma turboboa 128x2048; gemma turboboa 16x512
for c in 16x512s1 16x512s2; do add $G $c "boa:w4 turboboa:w4"; done
for c in 128x2048s1 128x2048s2; do add $G $c "boa:w3 gptq:w3 turboboa:w3"; done
smol turboboa 128x2048; smol boa 16x512
echo "$J" > /tmp/res/jobs.txt
GPUS=$(nvidia-smi -L | wc -l)
mkdir -p /tmp/tbqcache/kernels && gunzip -c "$REPO"/.device-carry/dp06/hadamard_quant-*.so.gz > /tmp/tbqcache/kernels/$(basename "$REPO"/.device-carry/dp06/hadamard_quant-*.so.gz .gz)
# the CUDA tests first, on the quiet machine (session 14 ran them beside the 16 lanes: after 26 minutes the first
# CUDA case had not finished; about 65 s alone in session 9)
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_hadamard_quant.py > /tmp/res/hadamard_quant_cuda_tests.txt 2>&1
tail -2 /tmp/res/hadamard_quant_cuda_tests.txt
RES=/tmp/res GPUS=$GPUS LANES=$((16 * GPUS)) FP=0 OMP_NUM_THREADS=1 JOBS="$J" setsid nohup bash benchmarks/gpu_calib_table.sh > /tmp/res/job.log 2>&1 < /dev/null &
bash /tmp/poll.sh 45  # the first poll: lanes started, GPU memory, the logs so far
