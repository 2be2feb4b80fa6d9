#!/bin/bash
# Issue 20 table, set-up call 8 of 8 (docs/gpu.md): join the parts copied to /tmp/b, install, materialize, start the JOBS below detached
REPO=$PWD
mkdir -p /tmp/res && cd /tmp/b && cat p00 p01 p02 p03 p04 p05 p06 p07 | tar x || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site whl/*.whl > /tmp/res/pip.log 2>&1 || { tail -5 /tmp/res/pip.log; exit 1; }
rm -rf /tmp/b/whl; cp "$REPO/docs/gpu-calib/poll.sh" /tmp/poll.sh
cp -r "$REPO" /tmp/repo && cd /tmp/repo && rm -rf .device-carry
export PYTHONPATH=/tmp/site:/tmp/repo TBQ_CACHE=/tmp/tbqcache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 -c "import transformers, torch; print('transformers', transformers.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())"
python3 -c "from turboboa_export.models import materialize_builtin as m; print(m('gemma3-270m'))" > /tmp/res/mat-g.log 2>&1 &
python3 -c "from turboboa_export.models import materialize_builtin as m; print(m('smollm2-135m'))" > /tmp/res/mat-s.log 2>&1 &
wait
tail -c 300 /tmp/res/mat-g.log; tail -c 300 /tmp/res/mat-s.log
# session 18: the rest of the seed-0 table with --centred-keys (protocol :centred), before it can become the default
# for boa and turboboa: every Gemma cell not run centred yet: 11 jobs, one per lane (session 17 ran 16 such
# jobs in 21 minutes; SmolLM2's six 16 x 512 cells dropped to fit the 27 minutes left). SmolLM2's cells next.
G=gemma3-270m S=smollm2-135m J=""
add() { for p in $3; do J="$J${J:+,}$1/$2/$p"; done; }
add $G 16x512 "boa:w3:centred boa:w3-g64:centred turboboa:w3:centred turboboa:w3-g64:centred turboboa:w4:centred"
add $G 128x2048 "boa:w3-g64:centred boa:w4:centred boa:w4-g128:centred"
add $G 128x2048 "turboboa:w3-g64:centred turboboa:w4:centred turboboa:w4-g128:centred"
echo "$J" > /tmp/res/jobs.txt
GPUS=$(nvidia-smi -L | wc -l)
RES=/tmp/res GPUS=$GPUS LANES=$((16 * GPUS)) FP=0 OMP_NUM_THREADS=1 JOBS="$J" setsid nohup bash benchmarks/gpu_calib_table.sh > /tmp/res/job.log 2>&1 < /dev/null &
bash /tmp/poll.sh 45  # the first poll: lanes started, GPU memory, the logs so far
