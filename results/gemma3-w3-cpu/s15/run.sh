#!/bin/bash
# NAME PRESET METHOD [CONFIG_JSON] [BOA_ADAPTIVE=1]: Gemma-3-270M on the H200 table's 16 x 512 exl2-c4 windows (seed 0,
# 2 held out), then wiki ppl over all 20 windows of 2048, one thread (session 15). BOA_ADAPTIVE=1: BoA recomputes
# each row's grid from its compensated weights (turboboa_options patched), everything else BoA's
cd /work/main
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
mkdir -p /tmp/e15; out=/tmp/e15/$1
echo "$(date +%T) start $*" >> /tmp/e15/log
.venv/bin/python -c "
import sys
if sys.argv[1] == '1':
    from turboboa_export import methods
    base = methods.turboboa_options
    def adaptive(cfg, *a, **k):
        o = base(cfg, *a, **k)
        return methods.TurboBoAOptions(**{**o.__dict__, 'adaptive_grid': True})
    methods.turboboa_options = adaptive
from tbq_cli.main import main
sys.argv = ['tbq'] + sys.argv[2:]
main()" "${5:-0}" quantize gemma3-270m -o "$out" --preset "$2" --method "$3" ${4:+--config "$4"} --dataset exl2-c4 \
  --nsamples 18 --holdout 2 --seqlen 512 --device cpu > "$out.qlog" 2>&1
.venv/bin/python -m tbq_eval.ppl "$out" --json "$out.ppl20.json" > "$out.p20log" 2>&1
echo "$(date +%T) eval20 $1 $(python3 -c "import json;print(json.load(open('$out.ppl20.json'))['ppl'])")" >> /tmp/e15/log
