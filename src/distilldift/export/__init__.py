"""Models in other formats: ONNX with free input sizes, checked in ONNX Runtime (``onnx``)."""

from ..lazy import lazy_exports

_EXPORTS = {"export_onnx": "onnx", "check_onnx": "onnx"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
