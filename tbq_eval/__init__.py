"""Evaluation scripts: perplexity (and, later, zero-shot accuracy and vLLM throughput)."""
