#!/bin/bash
# sequential full-pipeline runs (one process at a time); each ~2 min
R=/tmp/hout/run.sh
for t in 1 2; do $R q10 $t '{"method":"turboboa"}' '{"q":10}'; done
for t in 1 2; do $R f64 $t '{"method":"turboboa"}' '{"f64":1}'; done
for t in 1 2; do $R q100 $t '{"method":"turboboa"}' '{"q":100}'; done
for t in 1 2; do $R qk10 $t '{"method":"turboboa"}' '{"q":10,"k":10}'; done
for t in 1 2; do $R gptq $t '{"method":"gptq"}' '{}'; done
for t in 1 2; do $R qk100 $t '{"method":"turboboa"}' '{"q":100,"k":100}'; done
echo BATCH DONE >> /tmp/hout/results.txt
