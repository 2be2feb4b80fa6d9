#!/bin/bash
# usage: run.sh NAME THREADS QUANT_JSON MULT_JSON  -> /tmp/hout/runs/NAME_tTHREADS (+ .calls.pt, .err.pt), RESULT line to results.txt
cd /work/main
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$2
d=/tmp/hout/runs/$1_t$2; rm -rf $d $d.partial
.venv/bin/python /tmp/hout/run_setting.py $2 $d "$3" "$4" > $d.log 2>&1
echo "$1 $(grep RESULT $d.log)" | tee -a /tmp/hout/results.txt
