#!/bin/bash
cd /work/main
for n in "$@"; do
OMP_NUM_THREADS=1 .venv/bin/python -m tbq_eval.ppl /tmp/e11/$n --json /tmp/e11/$n.ppl20.json > /tmp/e11/$n.p20log 2>&1
echo "$(date +%T) eval20 $n $(python3 -c "import json;print(json.load(open('/tmp/e11/$n.ppl20.json'))['ppl'])")" >> /tmp/e11/log
done
