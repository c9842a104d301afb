"""torchslim: distill, prune and quantize a trained PyTorch model, and measure what you ship.

    import torchslim as ts
    data = ts.load_dataset("mnist")                          # root: argument or $TORCHSLIM_DATA
    teacher = ts.create_model("lenet5", num_classes=10, input_shape=data.input_shape)
    ts.train(teacher, data, ts.TrainConfig(epochs=5))
    masks = ts.prune_(teacher, ts.MagnitudePruneConfig(sparsity=0.9))
    art = ts.quantize(teacher, ts.StaticInt8Config(), data, "lenet5.int8.onnx")

Nothing heavy is imported until a name is used.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "TorchslimError": "torchslim.errors",
    "Artifact": "torchslim.artifact",
    "load_dataset": "torchslim.data", "DataBundle": "torchslim.data",
    "create_model": "torchslim.models", "list_models": "torchslim.models",
    "load_hf_classifier": "torchslim.models.hf", "HFSequenceClassifier": "torchslim.models.hf",
    "load_hf_encoder": "torchslim.models.hf", "HFSentenceEncoder": "torchslim.models.hf",
    "drop_layers": "torchslim.models.hf", "save_hf_model": "torchslim.models.hf",
    "check_text_inputs": "torchslim.models.hf", "transformer_layers": "torchslim.models.hf",
    "train": "torchslim.training", "fit": "torchslim.training", "TrainConfig": "torchslim.training",
    "accuracy_of": "torchslim.training",
    "distill": "torchslim.distillation", "KDConfig": "torchslim.distillation", "kd_loss": "torchslim.distillation",
    "LossSpec": "torchslim.distillation", "FeatureTaps": "torchslim.distillation",
    "prune_": "torchslim.prune", "PruneConfig": "torchslim.prune", "MagnitudePruneConfig": "torchslim.prune",
    "prune_channels_": "torchslim.prune", "ChannelPruneConfig": "torchslim.prune", "Masks": "torchslim.prune",
    "prune_with_schedule": "torchslim.prune", "iterative_prune": "torchslim.prune",
    "prune_channels_to_target": "torchslim.prune", "prune_ffn_": "torchslim.prune",
    "prune_heads_": "torchslim.prune",
    "quantize": "torchslim.quant", "StaticInt8Config": "torchslim.quant", "DynamicInt8Config": "torchslim.quant",
    "QuantSpec": "torchslim.quant", "QuantConfig": "torchslim.quant", "ptq": "torchslim.quant", "qat": "torchslim.quant",
    "prepare": "torchslim.quant", "calibrate": "torchslim.quant", "fold_batchnorm": "torchslim.quant",
    "export_qdq": "torchslim.quant", "export_qdq_verified": "torchslim.quant", "mixed_precision": "torchslim.quant",
    "export_onnx": "torchslim.export", "verify_onnx": "torchslim.export", "ExportConfig": "torchslim.export",
    "evaluate": "torchslim.evaluation", "LatencyConfig": "torchslim.evaluation", "Evaluation": "torchslim.evaluation",
    "count_macs": "torchslim.evaluation", "count_params": "torchslim.evaluation",
    "machine_info": "torchslim.evaluation",
    "Task": "torchslim.tasks", "ImageClassification": "torchslim.tasks", "TextClassification": "torchslim.tasks",
    "get_task": "torchslim.tasks", "predict": "torchslim.training",
    "load_recipe": "torchslim.recipe", "Recipe": "torchslim.recipe", "run_recipe": "torchslim.pipeline",
    "save_checkpoint": "torchslim.io", "load_checkpoint": "torchslim.io",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'torchslim' has no attribute '{name}'")
