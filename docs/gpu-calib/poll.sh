#!/bin/bash
# poll: wait, then bring back the small result files (not the run folders' weights or tokenizers)
sleep ${1:-240}
cd /tmp/res && tail -4 stages.txt; grep -c done stages.txt; ls done 2>/dev/null; uptime; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
find . \( -name '*.jsonl' -o -name '*.txt' -o -name 'run.json' -o -name '*.log' -o -name '*.md' \) -size -2M | tar czf $OUT/res.tgz -T - && ls -la $OUT/res.tgz
cat */results.jsonl | python3 -c "import sys,json; [print(r['run'], r.get('calib'), r.get('seed'), round(r['ppl'],2), round(r.get('quantize_s',0))) for r in map(json.loads, sys.stdin)]" | tail -60
