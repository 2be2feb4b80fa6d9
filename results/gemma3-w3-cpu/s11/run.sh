#!/bin/bash
# name, extra tbq quantize args
cd /work/main
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
echo "$(date +%T) start $1" >> /tmp/e11/log
.venv/bin/tbq quantize gemma3-270m -o /tmp/e11/$1 --preset w3-g64 --dataset exl2-c4 --nsamples 18 --holdout 2 --seqlen 512 --device cpu "${@:2}" > /tmp/e11/$1.qlog 2>&1
.venv/bin/python -m tbq_eval.ppl /tmp/e11/$1 --max-windows 6 --json /tmp/e11/$1.ppl.json > /tmp/e11/$1.plog 2>&1
echo "$(date +%T) done $1 $(cat /tmp/e11/$1.ppl.json | tr -d '\n')" >> /tmp/e11/log
