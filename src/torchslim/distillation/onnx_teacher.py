"""A teacher you only have as an ONNX file: run in ONNX Runtime, as a frozen module that gives logits.

Enough for logit distillation (its soft labels are cached like any teacher's); feature losses need a PyTorch
teacher, since an ONNX Runtime session exposes no intermediate modules to tap.

Example:
    >>> teacher = OnnxTeacher("teacher.onnx", num_classes=10)          # doctest: +SKIP
    >>> distill(student, teacher, data, KDConfig(temperature=4), TrainConfig(epochs=5))  # doctest: +SKIP
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim.errors import TorchslimError

_NUMPY = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
          "tensor(int32)": np.int32, "tensor(float16)": np.float16}


class OnnxTeacher(nn.Module):
    """Logits from an ONNX model run by ONNX Runtime (CPU); no gradients, no parameters.

    With `example_inputs`, the file is run once and its output must have `num_classes` logits per row.
    """

    def __init__(self, path: str | os.PathLike, num_classes: int, *, example_inputs: Any = None,
                 threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise TorchslimError(f"ONNX teacher not found: {self.path}")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for a file that is not a valid model
            raise TorchslimError(f"ONNX teacher {self.path} cannot be loaded by ONNX Runtime: "
                                 f"{str(e).splitlines()[0][:200]}") from None
        self.inputs = [(i.name, _NUMPY.get(i.type, np.float32)) for i in self.session.get_inputs()]
        self.num_classes = num_classes
        if example_inputs is not None:
            got = self(example_inputs).shape
            if len(got) != 2 or got[1] != num_classes:
                raise TorchslimError(f"ONNX teacher {self.path} gives outputs of shape {tuple(got)} per batch, but the "
                                     f"data has {num_classes} classes; it needs (batch, {num_classes}) logits")

    def forward(self, x: torch.Tensor | dict[str, torch.Tensor], **named: torch.Tensor) -> torch.Tensor:
        given = dict(x) if isinstance(x, dict) else {self.inputs[0][0]: x}
        given.update(named)
        feed = {}
        for name, dtype in self.inputs:
            if name not in given:
                raise TorchslimError(f"ONNX teacher {self.path} needs an input '{name}'; given: {', '.join(given)}")
            feed[name] = np.ascontiguousarray(given[name].detach().cpu().numpy(), dtype=dtype)
        try:
            out = self.session.run(None, feed)[0]
        except Exception as e:
            raise TorchslimError(f"ONNX teacher {self.path} failed on inputs "
                                 f"{ {k: tuple(v.shape) for k, v in feed.items()} }: {str(e).splitlines()[0][:200]}") from None
        return torch.from_numpy(np.asarray(out, dtype=np.float32))
