"""Turn a float model into a fake-quant model: fold batch norm, quantize weights and activations, calibrate.

``prepare`` traces the model with torch.fx and

* folds every BatchNorm2d that directly follows a Conv2d into the conv (:func:`fold_batchnorm`);
* swaps each Conv2d/Linear for :class:`QuantConv2d`/:class:`QuantLinear` (subclasses, so pruning and MAC counting
  still recognise them), whose weights pass through a :class:`FakeQuant` on every forward;
* inserts an activation :class:`FakeQuant` after the model input, after each quantized layer and after each
  residual addition — after the ReLU that follows them, if any (an unsigned grid with zero point 0 clips at 0 by
  itself, so ONNX Runtime drops that ReLU and fuses the layer). Model outputs (logits) stay in float. Any quantized layer whose input is not already on a grid
  (reached through grid-preserving ops: max-pool, flatten, reshape, dropout) gets one more after its producer, e.g.
  after ResNet's global average pool. These are the places where ONNX Runtime's integer kernels read and write
  8-bit tensors, so the exported model (:mod:`torchslim.quant.export`) computes what the fake-quant model computes.

The result is an ordinary ``nn.Module`` (a ``torch.fx.GraphModule``): ``fit``, ``distill``, ``predict``, state
dicts and DDP work on it unchanged.

Example:
    >>> from torchslim.models import create_model
    >>> model = create_model("lenet5-classic", input_shape=(1, 32, 32))
    >>> qmodel = ptq(model, QuantConfig(), torch.randn(256, 1, 32, 32))
    >>> qmodel(torch.randn(2, 1, 32, 32)).shape
    torch.Size([2, 10])
"""
from __future__ import annotations

import copy
import fnmatch
import itertools
import operator
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from torchslim.errors import TorchslimError, did_you_mean
from torchslim.quant.fakequant import FakeQuant, effective_scale, fake_quantize
from torchslim.quant.config import QuantConfig
from torchslim.quant.spec import QuantSpec
from torchslim.tasks import forward

if TYPE_CHECKING:  # annotations only: qat imports the training loop when it runs
    from torchslim.data import DataBundle
    from torchslim.distillation import KDConfig
    from torchslim.training import FitResult, TrainConfig

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
ACTIVATIONS = "activation_quantizers"  # the ModuleDict holding every activation FakeQuant, keyed by site

# Ops whose output lies on the grid of their input (they select, move or reshape values, never mix them): a
# quantized tensor that passes through them needs no new quantizer.
_GRID_PRESERVING_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Flatten, nn.Unflatten, nn.Dropout,
                            nn.Dropout1d, nn.Dropout2d, nn.Identity)
_GRID_PRESERVING_FUNCTIONS = (torch.flatten, torch.reshape, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.dropout)
_GRID_PRESERVING_METHODS = ("view", "reshape", "flatten", "contiguous")
_RELU_FUNCTIONS = (F.relu, torch.relu)
_ADD_FUNCTIONS = (operator.add, torch.add)


class _QuantLayer:
    """Shared logic of the quantized Conv2d and Linear: the weight's FakeQuant follows the weight as it trains."""

    weight_fake_quant: FakeQuant
    input_quantizer: str | None  # key in the model's activation ModuleDict feeding this layer (export: bias scale)
    input_direct: bool  # whether that quantizer's output is this layer's input, with no max-pool/flatten between

    def _init_quant(self, spec: QuantSpec, observer: str, learnable: bool, observer_options: dict) -> None:
        self.weight_fake_quant = FakeQuant(spec, observer, kind="weight", channels=self.weight.shape[0],
                                           learnable=learnable, **observer_options)
        self.input_quantizer = None
        self.input_direct = False
        self._weight_key: tuple[int, int] | None = None
        self._set_input_fake_quant(None)

    def _adopt(self, float_layer: nn.Module, spec: QuantSpec, observer: str, learnable: bool,
               observer_options: dict):
        """Take over `float_layer`'s weights and training mode, then attach the weight quantizer."""
        with torch.no_grad():
            self.weight.copy_(float_layer.weight)
            if float_layer.bias is not None:
                self.bias.copy_(float_layer.bias)
        self._init_quant(spec, observer, learnable, observer_options)
        return self.train(float_layer.training)

    def _set_input_fake_quant(self, fq: FakeQuant | None) -> None:
        # A plain reference, not a submodule: the quantizer belongs to the model's activation ModuleDict, and
        # registering it twice would duplicate its state-dict entries.
        object.__setattr__(self, "_input_fake_quant", fq)

    def refresh_weight_grid(self, force: bool = False) -> None:
        """Recompute the weight grid if the weights changed since it was computed (an optimizer step, a loaded state
        dict). A learned (LSQ) step is only initialised here, then trained."""
        fq = self.weight_fake_quant
        if fq.learnable and bool(fq.calibrated) and not force:
            return
        # Every in-place update of a tensor bumps its version counter: a cheap, exact "weights changed" test.
        key = (self.weight._version, self.weight.data_ptr())
        if force or key != self._weight_key or not bool(fq.calibrated):
            fq.observe_and_freeze(self.weight.detach())
            self._weight_key = (self.weight._version, self.weight.data_ptr())

    def quantized_weight(self) -> torch.Tensor:
        fq = self.weight_fake_quant
        if not fq.enabled or fq.observing:
            return self.weight
        self.refresh_weight_grid()
        return fq(self.weight)

    def bias_scale(self) -> torch.Tensor | None:
        """s_input·s_weight: the unit of the integer kernel's int32 accumulator, or None if the input has no grid."""
        source, fq = self._input_fake_quant, self.weight_fake_quant
        if source is None or not (source.enabled and fq.enabled) or source.observing or fq.observing:
            return None
        return (effective_scale(source) * effective_scale(fq)).detach()

    def quantized_bias(self) -> torch.Tensor | None:
        """The bias rounded to int32 in the accumulator's unit, as the integer kernel adds it (a change far below
        one output step, but it makes the fake-quant model compute what ONNX Runtime computes)."""
        scale = self.bias_scale() if self.bias is not None else None
        if scale is None:
            return self.bias
        return fake_quantize(self.bias, scale, torch.zeros_like(scale, dtype=torch.int32), INT32_MIN, INT32_MAX,
                             axis=0 if scale.dim() else None)


class QuantConv2d(_QuantLayer, nn.Conv2d):
    """A Conv2d whose weight is fake-quantized on every forward (per output channel when the spec says so)."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, spec: QuantSpec, observer: str = "minmax", learnable: bool = False,
                   **observer_options) -> QuantConv2d:
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                  padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
        return new._adopt(conv, spec, observer, learnable, observer_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.quantized_bias())


class QuantLinear(_QuantLayer, nn.Linear):
    """A Linear whose weight is fake-quantized on every forward (per output feature when the spec says so)."""

    @classmethod
    def from_float(cls, linear: nn.Linear, spec: QuantSpec, observer: str = "minmax", learnable: bool = False,
                   **observer_options) -> QuantLinear:
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  device=linear.weight.device, dtype=linear.weight.dtype)
        return new._adopt(linear, spec, observer, learnable, observer_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.quantized_bias())


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure means the same thing to the user
        raise TorchslimError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
            f"quantization needs a model whose forward has no data-dependent control flow"
        ) from None


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` with each BatchNorm2d that directly follows a Conv2d folded into that conv.

    The conv's weight is scaled per output channel by γ/√(σ²+ε) and its bias becomes (b−μ)·γ/√(σ²+ε)+β; the
    BatchNorm becomes an ``nn.Identity``. Folding uses the running statistics, so the copy computes what `model`
    computes in eval mode. Pairs are found by torch.fx tracing; a conv whose output has another user, or a BN
    without running statistics, is left alone.

    Example:
        >>> from torchslim.models import create_model
        >>> folded = fold_batchnorm(create_model("resnet8"))
        >>> any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        False
    """
    model = copy.deepcopy(model)
    graph = _trace(model)
    modules = dict(graph.named_modules())
    calls: dict[str, int] = {}
    for node in graph.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in graph.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        conv_node = node.args[0]
        if not (isinstance(conv_node, fx.Node) and conv_node.op == "call_module"
                and type(modules[conv_node.target]) is nn.Conv2d and len(conv_node.users) == 1):
            continue
        conv, bn = modules[conv_node.target], modules[node.target]
        # A module called twice would be folded twice (or fold a BN that sees other inputs too).
        if calls[conv_node.target] != 1 or calls[node.target] != 1 or bn.running_mean is None:
            continue
        _set_submodule(model, conv_node.target, _folded_conv(conv, bn))
        _set_submodule(model, node.target, nn.Identity())
    return model


@torch.no_grad()
def _folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(inv_std)
    beta = bn.bias if bn.affine else torch.zeros_like(inv_std)
    factor = gamma * inv_std  # [out_channels]
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                       padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                       padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
    folded.weight.copy_(conv.weight * factor.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    folded.bias.copy_((bias - bn.running_mean) * factor + beta)
    return folded.train(conv.training)


def _is(node: fx.Node, root: nn.Module, module_types: tuple, functions: tuple = (), methods: tuple = ()) -> bool:
    if node.op == "call_module":
        return isinstance(root.get_submodule(node.target), module_types)
    if node.op == "call_function":
        return node.target in functions
    return node.op == "call_method" and node.target in methods


def _match_layers(patterns: Iterable[str], layers: list[str], what: str) -> None:
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in layers):
            raise TorchslimError(f"{what} '{pattern}' matches no Conv2d/Linear layer{did_you_mean(pattern, layers)}; "
                                 f"layers: {', '.join(layers)}")


def _observer_options(name: str, cfg: QuantConfig) -> dict:
    return {"percentile": cfg.percentile} if name == "percentile" else {}


def prepare(model: nn.Module, cfg: QuantConfig | None = None) -> fx.GraphModule:
    """A fake-quant copy of `model` (BN folded, weights and activations quantized as `cfg` says), not yet calibrated.

    Layer names in ``cfg.exclude`` and ``cfg.per_layer_bits`` are the model's module names (``layer1.0.conv1``).
    Run :func:`calibrate` before using the result, or use :func:`ptq`, which does both.

    Example:
        >>> from torchslim.models import create_model
        >>> cfg = QuantConfig(per_layer_bits={"conv1": 8, "fc*": 8}, weight=QuantSpec(bits=4, per_channel=True))
        >>> qmodel = prepare(create_model("lenet5-classic", input_shape=(1, 32, 32)), cfg)
        >>> qmodel.conv2.weight_fake_quant.spec.bits, qmodel.fc1.weight_fake_quant.spec.bits
        (4, 8)
    """
    cfg = cfg or QuantConfig()
    gm = _trace(fold_batchnorm(model))
    graph = gm.graph
    for node in list(graph.nodes):  # folded BNs (and other identities) would only hide conv→ReLU pairs
        if node.op == "call_module" and type(gm.get_submodule(node.target)) is nn.Identity:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    modules = dict(gm.named_modules())

    layers = [n.target for n in graph.nodes
              if n.op == "call_module" and type(modules[n.target]) in (nn.Conv2d, nn.Linear)]
    _match_layers(cfg.exclude, layers, "exclude pattern")
    _match_layers(cfg.per_layer_bits or {}, layers, "per_layer_bits key")
    quantized: set[str] = set()
    for name in layers:
        if name in quantized or any(fnmatch.fnmatchcase(name, p) for p in cfg.exclude):
            continue
        spec = cfg.weight
        for pattern, bits in (cfg.per_layer_bits or {}).items():  # the last matching pattern wins
            if fnmatch.fnmatchcase(name, pattern):
                spec = cfg.weight.with_bits(bits)
        float_layer = modules[name]
        kind = QuantConv2d if isinstance(float_layer, nn.Conv2d) else QuantLinear
        if kind is QuantLinear and cfg.linear_per_channel is not None:
            spec = spec.model_copy(update={"per_channel": cfg.linear_per_channel})
        _set_submodule(gm, name, kind.from_float(float_layer, spec, cfg.weight_observer, cfg.learnable,
                                                 **_observer_options(cfg.weight_observer, cfg)))
        quantized.add(name)

    quantizers = nn.ModuleDict()
    gm.add_module(ACTIVATIONS, quantizers)
    output_node = next(n for n in graph.nodes if n.op == "output")

    def quantize_after(node: fx.Node) -> fx.Node:
        key = "input" if node.op == "placeholder" and "input" not in quantizers else node.name
        quantizers[key] = FakeQuant(cfg.activation, cfg.observer, kind="activation", learnable=cfg.learnable,
                                    **_observer_options(cfg.observer, cfg))
        with graph.inserting_after(node):
            q = graph.call_module(f"{ACTIVATIONS}.{key}", (node,))
        node.replace_all_uses_with(q, delete_user_cb=lambda user: user is not q)
        return q

    def through_relu(node: fx.Node) -> fx.Node:
        while len(node.users) == 1:
            user = next(iter(node.users))
            if not _is(user, gm, (nn.ReLU,), _RELU_FUNCTIONS, ("relu",)):
                break
            node = user
        return node

    # A model input that feeds an embedding holds token ids (integers): it has no grid to put it on.
    sites = [n for n in graph.nodes if n.op == "placeholder"
             and not any(_is(user, gm, (nn.Embedding, nn.EmbeddingBag), (F.embedding, F.embedding_bag))
                         for user in n.users)]
    sites += [through_relu(n) for n in graph.nodes
              if (n.op == "call_module" and n.target in quantized) or _is(n, gm, (), _ADD_FUNCTIONS, ("add",))]
    for site in dict.fromkeys(sites):
        if set(site.users) != {output_node}:  # logits stay float: quantizing them costs accuracy and saves nothing
            quantize_after(site)

    # Every quantized layer must read a tensor on a grid (the integer kernel's input); find the quantizer that
    # feeds it, or add one after the op that took its input off the grid.
    for node in list(graph.nodes):
        if node.op != "call_module" or node.target not in quantized:
            continue
        source = node.args[0]
        while (isinstance(source, fx.Node) and len(source.all_input_nodes) == 1
               and _is(source, gm, _GRID_PRESERVING_MODULES, _GRID_PRESERVING_FUNCTIONS, _GRID_PRESERVING_METHODS)):
            source = source.all_input_nodes[0]
        if not (source.op == "call_module" and source.target.startswith(f"{ACTIVATIONS}.")):
            source = quantize_after(source)
        layer = gm.get_submodule(node.target)
        layer.input_quantizer = source.target.removeprefix(f"{ACTIVATIONS}.")
        layer.input_direct = source is node.args[0]
        layer._set_input_fake_quant(gm.get_submodule(source.target))

    graph.lint()
    gm.delete_all_unused_submodules()  # the Identity modules left by folding
    gm.recompile()
    _carry_masks(model, gm)
    return gm


def _carry_masks(model: nn.Module, gm: fx.GraphModule) -> None:
    """Pruning masks attached to `model` (by ``prune_``), re-attached to the same-named layers of its quantized copy,
    so that training the copy (QAT) holds the pruned weights at zero as training `model` would (BN folding scales a
    conv's weights per channel: its zeros stay zeros)."""
    masks = getattr(model, "_torchslim_masks", None)
    if masks is None:
        return
    names = dict(gm.named_modules())
    kept = {name: mask for name, mask in masks.masks.items() if name in names and hasattr(names[name], "weight")}
    if kept:
        gm.__dict__["_torchslim_masks"] = type(masks)({name: names[name] for name in kept}, kept)


def _input_batches(x: Any, batch_size: int = 256) -> Iterable[Any]:
    """Model inputs per batch: a tensor or a mapping of tensors split into `batch_size` rows; from an iterable, each
    item's inputs (an item is a tensor, a mapping of tensors, or an ``(inputs, labels, ...)`` batch)."""
    from torchslim.training.loop import iter_batches, split_batch

    if isinstance(x, (torch.Tensor, Mapping)):
        return (xb for xb, _ in iter_batches(x, batch_size))
    return (xb if isinstance(xb, torch.Tensor) else split_batch(xb)[0] for xb in x)


@torch.no_grad()
def calibrate(model: nn.Module, x_batches: Any) -> nn.Module:
    """Run `x_batches` through the float model while every activation observer records its input, then freeze all
    grids (weights from the weights themselves). `x_batches` is a tensor or a mapping of tensors (split into
    batches), or an iterable of batches: tensors, mappings (``model(**inputs)``), or ``(inputs, labels)`` batches such
    as a DataLoader's.

    Returns `model` (calibrated in place), in the train/eval mode it came in.

    Example:
        >>> qmodel = calibrate(prepare(model, QuantConfig(observer="mse")), data.train.tensors[0][:2048])  # doctest: +SKIP
    """
    activations = [m for m in model.modules() if isinstance(m, FakeQuant) and m.kind == "activation"]
    weights = [m for m in model.modules() if isinstance(m, _QuantLayer)]
    if not activations and not weights:
        raise TorchslimError("calibrate: the model has no FakeQuant modules; call prepare(model, cfg) first")
    was_training = model.training
    model.eval()
    for layer in weights:
        layer.weight_fake_quant.enabled = False  # observe the float model: the ranges a float model produces
    for fq in activations:
        fq.observer.reset()
        fq.observing = True
    seen = 0
    try:
        for xb in _input_batches(x_batches):
            forward(model, xb)
            seen += 1
    finally:
        for layer in weights:
            layer.weight_fake_quant.enabled = True
    if seen == 0:
        raise TorchslimError("calibrate: no calibration batches were given")
    for fq in activations:
        fq.freeze()
    for layer in weights:
        layer.refresh_weight_grid(force=True)
    return model.train(was_training)


def calibration_rows(x: Any, cfg: QuantConfig, seed: int = 0) -> list:
    """`cfg.calibration_batches` batches of inputs to calibrate on: of a tensor or a mapping of row-aligned tensors,
    batches of `cfg.calibration_batch_size` random rows (seeded; at most all of `x`); of a DataLoader or iterable of
    batches, its first `cfg.calibration_batches` batches' inputs, as they come."""
    if isinstance(x, Mapping):
        rows = next(iter(x.values()), torch.empty(0))
        g = torch.Generator().manual_seed(seed)
        n = min(len(rows), cfg.calibration_batches * cfg.calibration_batch_size)
        order = torch.randperm(len(rows), generator=g)[:n]
        parts = {k: v[order].split(cfg.calibration_batch_size) for k, v in x.items()}
        return [dict(zip(parts, chunk)) for chunk in zip(*parts.values())]
    if not isinstance(x, torch.Tensor):
        return list(itertools.islice(_input_batches(x), cfg.calibration_batches))
    g = torch.Generator().manual_seed(seed)
    n = min(len(x), cfg.calibration_batches * cfg.calibration_batch_size)
    return list(x[torch.randperm(len(x), generator=g)[:n]].split(cfg.calibration_batch_size))


def ptq(model: nn.Module, cfg: QuantConfig | None, calibration_x: Any, *, seed: int = 0) -> fx.GraphModule:
    """Static post-training quantization: :func:`prepare` a copy of `model`, then :func:`calibrate` it on
    ``cfg.calibration_batches`` batches of `calibration_x`: random rows of training inputs (a tensor, or a mapping
    of tensors), or the first batches of a DataLoader / iterable of ``(inputs, labels)`` batches. `model` is not
    changed.

    Example:
        >>> qmodel = ptq(model, QuantConfig(weight=QuantSpec(bits=8, per_channel=True)), data.train.tensors[0])  # doctest: +SKIP
        >>> qmodel = ptq(model, QuantConfig(), train_loader)  # doctest: +SKIP
    """
    cfg = cfg or QuantConfig()
    batches = calibration_rows(calibration_x, cfg, seed)
    if not batches:
        raise TorchslimError("ptq: calibration_x is empty; give some training inputs")
    return calibrate(prepare(model, cfg), batches).eval()


def qat(model: nn.Module, cfg: QuantConfig | None, data: DataBundle | Any, train: TrainConfig, *,
        val: Any | None = None, teacher: nn.Module | None = None, kd: KDConfig | None = None, seed: int = 0,
        checkpoint: str | os.PathLike | None = None, stage: str = "qat",
        log: Callable[[str], None] = print) -> tuple[fx.GraphModule, FitResult]:
    """Quantization-aware training: :func:`ptq` on the training data (the starting grid), then train the fake-quant
    model with :func:`~torchslim.training.fit` — or with :func:`~torchslim.distillation.distill` from `teacher`
    (typically the fp32 model) when `kd` is given. With ``cfg.learnable`` the step sizes train too (LSQ).

    `data` is a DataBundle (train on ``data.train``, validate on ``data.val`` unless `val` is given), or a DataLoader /
    re-iterable of ``(inputs, labels)`` batches (calibrated on its first ``cfg.calibration_batches`` batches,
    validated on `val`).

    Returns ``(fake-quant model, FitResult)``; `model` is not changed.

    Example:
        >>> qmodel, result = qat(model, QuantConfig(weight=QuantSpec(bits=4, per_channel=True)), data,
        ...                      TrainConfig(epochs=3, lr=1e-4))   # doctest: +SKIP
    """
    from torchslim.distillation.kd import distill
    from torchslim.training.loop import fit, splits

    if (kd is None) != (teacher is None):
        raise TorchslimError("qat: distillation needs both `teacher` and `kd` (a KDConfig); give both or neither")
    train_set, val_set = splits(data, val)
    calibration = train_set.tensors[0] if hasattr(train_set, "tensors") else train_set
    qmodel = ptq(model, cfg, calibration, seed=seed)
    if kd is not None:
        result = distill(qmodel, teacher, train_set, kd, train, val=val_set, seed=seed, checkpoint=checkpoint,
                         stage=stage, log=log)
    else:
        result = fit(qmodel, train_set, val_set, train, seed=seed, checkpoint=checkpoint, stage=stage, log=log)
    return qmodel.eval(), result
