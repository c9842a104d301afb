"""Export to ONNX, and verification of the exported file against PyTorch."""
from torchslim.export.compressed import format_size_report, load_compressed, save_compressed
from torchslim.export.config import ExportConfig
from torchslim.export.onnx import compare_logits, export_onnx, ort_logits, ort_session, verify_onnx

__all__ = ["save_compressed", "load_compressed", "format_size_report", "ExportConfig", "export_onnx", "verify_onnx", "ort_session", "ort_logits", "compare_logits"]
