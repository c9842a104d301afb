"""Export to ONNX, and verification of the exported file against PyTorch."""
from torchslim.export.config import ExportConfig
from torchslim.export.onnx import compare_logits, export_onnx, ort_logits, ort_session, verify_onnx

__all__ = ["ExportConfig", "export_onnx", "verify_onnx", "ort_session", "ort_logits", "compare_logits"]
