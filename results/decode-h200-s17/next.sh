#!/bin/bash
# Issue 17, the next experiment (prepared in session 17, not run yet): one device call, the tracked tree only, no
# carry, about 3 minutes. (1) x staged in shared memory once per block (xsmem.patch; M K sizeof(T) <= 48 KB, so M <= 2
# at K = 11008) against the kernel, checked and timed side by side; (2) the CUDA tests with the variant in place of
# the kernel's source; (3) Nsight Compute of the kernel as it is (v4 was never profiled): stall reasons and the
# source counters of one gate_proj-shaped call (11008 x 4096, W4 g128, M = 1). Outputs go to $OUT.
#   device call: bash results/decode-h200-s17/next.sh   (timeout 300)
export TBQ_CACHE=/tmp/tc PYTHONPATH=$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
V=results/decode-h200-s17 OUT=${OUT:-/tmp/out}
# The variant: $V/xsmem.cu where it was made before the call (untracked files travel with the working tree:
# `patch -o results/decode-h200-s17/xsmem.cu tbq_kernels/csrc/decode_gemm.cu < results/decode-h200-s17/xsmem.patch`),
# else patched here
mkdir -p "$OUT" /tmp/vx
[ -f $V/xsmem.cu ] || patch -s -o $V/xsmem.cu tbq_kernels/csrc/decode_gemm.cu < $V/xsmem.patch \
  || { echo "error: no xsmem.cu and no patch here; make it before the call (the command above)"; exit 3; }
cp $V/xsmem.cu /tmp/vx/decode_gemm.cu && cp $V/xsmem.cu /tmp/vx/xsmem.cu
B='import sys; from pathlib import Path; from tbq_kernels.build import built; print(built(Path(sys.argv[1]), (9, 0)))'
python3 -c "$B" /tmp/vx/decode_gemm.cu > "$OUT/build-xsmem-as-kernel.log" 2>&1 &
timeout 150 python3 $V/compare_sources.py tbq_kernels/csrc/decode_gemm.cu /tmp/vx/xsmem.cu --m 1,2,8 \
  --json "$OUT/compare_xsmem.json" > "$OUT/compare_xsmem.txt" 2>&1
grep -v '^{' "$OUT/compare_xsmem.txt" | tail -8
wait
cp tbq_kernels/csrc/decode_gemm.cu /tmp/kernel-v4.cu && cp /tmp/vx/decode_gemm.cu tbq_kernels/csrc/decode_gemm.cu
timeout 40 python3 -m pytest -q -x -p no:cacheprovider tests/test_decode_gemm.py > "$OUT/tests-xsmem.txt" 2>&1
tail -1 "$OUT/tests-xsmem.txt"
cp /tmp/kernel-v4.cu tbq_kernels/csrc/decode_gemm.cu
D='import torch; from tbq_kernels.benchmarks.timing import random_weight; from tbq_kernels.decode_gemm import decode_gemm
g = torch.Generator().manual_seed(0); w = random_weight(11008, 4096, 4, 128, g)[3].to("cuda")
x = torch.randn(1, 4096, generator=g).half().cuda()
for _ in range(3): decode_gemm(x, w)
torch.cuda.synchronize()'
timeout 90 ncu --clock-control none --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
  --section SourceCounters --section MemoryWorkloadAnalysis -k regex:decode_gemm_kernel -s 2 -c 1 \
  python3 -c "$D" > "$OUT/ncu_v4_gate_m1.txt" 2>&1 || echo "ncu failed (rc $?)"
grep -E "Duration|DRAM Throughput|Issued Warp|Eligible Warps|Warp Cycles Per Issued|stall" "$OUT/ncu_v4_gate_m1.txt" | head -20
