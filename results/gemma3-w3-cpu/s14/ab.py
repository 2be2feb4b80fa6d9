"""heldout_variants with H_in of normed q/k plain (PLAIN=1) or 1/rms^2-weighted (default, the new code)."""
import os, sys
sys.path.insert(0, "/work/main/benchmarks")
if os.environ.get("PLAIN") == "1":
    from turboboa_export.pipeline.attention_stats import AttentionStatistics
    AttentionStatistics.h_in_normed = lambda self, role: None
import heldout_variants
heldout_variants.main()
