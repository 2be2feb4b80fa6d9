#!/bin/bash
# name, preset, extra tbq quantize args: quantize on the H200 table's 16 x 512 windows, then wiki ppl over all 20 windows
cd /work/main
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
echo "$(date +%T) start $1 $2" >> /tmp/e11/log
.venv/bin/tbq quantize gemma3-270m -o /tmp/e11/$1 --preset $2 --dataset exl2-c4 --nsamples 18 --holdout 2 --seqlen 512 --device cpu "${@:3}" > /tmp/e11/$1.qlog 2>&1
.venv/bin/python -m tbq_eval.ppl /tmp/e11/$1 --json /tmp/e11/$1.ppl20.json > /tmp/e11/$1.p20log 2>&1
echo "$(date +%T) eval20 $1 $(python3 -c "import json;print(json.load(open('/tmp/e11/$1.ppl20.json'))['ppl'])")" >> /tmp/e11/log
