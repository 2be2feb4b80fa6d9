"""Negative scales per run folder (session 11: python count_negative_scales.py /tmp/e11/{tb,tb-old,tb-a0,gptq,tb-clamp})."""
import glob
import sys

from safetensors.torch import load_file

for run in sys.argv[1:]:
    per = {}
    for f in sorted(glob.glob(f"{run}/blocks/*.safetensors")):
        for k, v in load_file(f).items():
            if k.endswith(".scale") and int((v < 0).sum()):
                per[k] = int((v < 0).sum())
    print(run, sum(per.values()), per)
