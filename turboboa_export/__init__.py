"""tbq: TurboBoA quantization for LLMs, exported to vLLM.

The Python API (``turboboa_export.api``; light to import): ``quantize``, ``Run``, ``load_fake_quant_model`` and
``export_run`` (``api.export``: the name ``export`` here is the ``turboboa_export.export`` subpackage).
"""

__version__ = "0.1.0"

from .api import Run, load_fake_quant_model, quantize  # noqa: E402
from .api import export as export_run  # noqa: E402

__all__ = ["Run", "export_run", "load_fake_quant_model", "quantize", "__version__"]
