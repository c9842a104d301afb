"""The `export` stage: fp32 ONNX verified against PyTorch, or a Deep Compression file."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

from torchslim.artifact import Artifact, Runtime
from torchslim.export import ExportConfig, export_onnx, load_compressed, save_compressed
from torchslim.export.onnx import OnnxVerification
from torchslim.pipeline.stages.base import STAGES, RunState, Stage
from torchslim.records import as_info


@STAGES.register("export", help="export the current model: fp32 ONNX (verified) or a Deep Compression file")
class ExportStage(Stage, ExportConfig):
    """Export the current model: `onnx` (fp32, verified against PyTorch) or `compressed` (Deep Compression file:
    sparse relative indices + codebook indices, Huffman-coded; evaluated on the model loaded back from the file)."""

    type: Literal["export"]
    format: Literal["onnx", "compressed"] = "onnx"

    @property
    def runtime(self) -> Runtime:
        return "onnxruntime" if self.format == "onnx" else "pytorch"

    def run(self, state: RunState, seed: int) -> Artifact:
        if self.format == "compressed":
            path = state.out / f"{self.label}.tsdc"
            sizes = save_compressed(state.model, path, state.codebooks)
            state.log(f"[{self.label}] compressed file {sizes['file_bytes']:,} bytes, "
                      f"{sizes['ratio']:.1f}x smaller than fp32")
            info = {"format": "compressed", "ratio_vs_fp32_state_dict": sizes["ratio"],
                    "fixed_width_bytes": sizes.get("fixed_width_bytes"), "lzma_bytes": sizes.get("lzma_bytes")}
            return self.reload(state, path, info)  # evaluate the file that ships, loaded back from disk
        path = export_onnx(state.model, state.out / f"{self.label}.onnx", task=state.task, opset=self.opset)
        v = None
        if self.verify:
            v = OnnxVerification.measure(state.model, path, state.test_inputs(), threads=state.recipe.evaluate.threads)
            state.log(f"[{self.label}] ONNX vs PyTorch on {v.samples} test inputs: max |Δlogit| "
                      f"{v.max_abs_diff:.2e}, top-1 agreement {100 * v.top1_agreement:.2f}%")
        return Artifact(self.label, self.type, "onnxruntime", path, state.model, as_info(v, opset=self.opset),
                        self.source(state))

    def reload(self, state: RunState, path: Path, info: dict) -> Artifact:
        if self.format == "compressed":
            return Artifact(self.label, self.type, "pytorch", path,
                            load_compressed(path, copy.deepcopy(state.model)).eval(), info, self.source(state))
        return super().reload(state, path, info)
