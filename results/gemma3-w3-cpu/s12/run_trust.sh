#!/bin/bash
# MODEL NAME PRESET TRUST [tbq quantize args]: quantize on the H200 table's 16 x 512 exl2-c4 windows with F3's trust
# factor set to TRUST (refine.TRUST, monkeypatched), then wiki ppl over all 20 windows of 2048 (session 12)
cd /work/main
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
out=/tmp/e12/$2
echo "$(date +%T) start $2 $1 $3 trust $4" >> /tmp/e12/log
.venv/bin/python -c "
import sys
from turboboa_export.algorithms import refine
refine.TRUST = float(sys.argv[1])
from tbq_cli.main import main
sys.argv = ['tbq'] + sys.argv[2:]
main()" "$4" quantize "$1" -o "$out" --preset "$3" --dataset exl2-c4 --nsamples 18 --holdout 2 --seqlen 512 --device cpu "${@:5}" > "$out.qlog" 2>&1
.venv/bin/python -m tbq_eval.ppl "$out" --json "$out.ppl20.json" > "$out.p20log" 2>&1
echo "$(date +%T) eval20 $2 $(python3 -c "import json;print(json.load(open('$out.ppl20.json'))['ppl'])")" >> /tmp/e12/log
