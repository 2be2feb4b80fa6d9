"""tbq: TurboBoA quantization for LLMs, exported to vLLM."""

__version__ = "0.1.0"
