"""Runs a recipe: the teacher, then each stage in order, then one evaluation of every artifact.

Each stage reads the run state (data, teacher, current model) and adds exactly one artifact. Stages copy the model
they start from, so every artifact in the report is the model as that stage left it.

A run survives being killed: training stages checkpoint their full state every epoch into `<out>/checkpoints/`,
and `progress.json` lists the stages already finished. `run_recipe(..., resume=True)` reloads finished stages from
their artifacts (never redoing them) and continues the interrupted one from its last finished epoch. Under torchrun
every rank trains; rank 0 alone writes files, exports, quantizes and evaluates.
"""
from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn

from torchslim.artifact import Artifact
from torchslim.errors import TorchslimError
from torchslim.io import atomic_write_json, atomic_write_text, load_checkpoint, load_state_dict, save_checkpoint
from torchslim.recipe import ModelSpec, Recipe, dump_recipe, stage_name
from torchslim.registry import Registry
from torchslim.training import dist

Log = Callable[[str], None]
STAGES: Registry[Callable[..., Artifact]] = Registry("stage")


@dataclass
class RunState:
    recipe: Recipe
    out: Path
    data: object  # torchslim.data.DataBundle
    log: Log
    teacher: nn.Module | None = None
    teachers: dict[str, nn.Module] = field(default_factory=dict)  # every teacher by name (`teacher:` is "teacher")
    model: nn.Module | None = None  # the current model: what the next stage starts from
    student: str | None = None  # name of the first student artifact, the "uncompressed student" baseline
    artifacts: list[Artifact] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    codebooks: dict | None = None  # from a `share` stage, for a compressed export of the same model

    def create(self, spec: ModelSpec) -> nn.Module:
        from torchslim.models import create_model

        return create_model(spec.model, num_classes=self.data.num_classes, input_shape=self.data.input_shape,
                            **spec.args)

    def save(self, model: nn.Module, name: str, meta: dict) -> Path:
        path = self.out / f"{name}.safetensors"
        if dist.is_main():
            save_checkpoint(model, path, meta)
        return path

    def checkpoint(self, name: str) -> Path:
        """Where a training stage keeps its per-epoch state (removed once the stage is finished)."""
        return _checkpoint(self.out, name)


def _checkpoint(out: Path, name: str) -> Path:
    return out / "checkpoints" / f"{name.replace(' ', '-')}.pt"


def _checkpoints_of(out: Path, stage: str) -> list[Path]:
    """The stage's own checkpoint files: `<stage>.pt`, and `<stage>-round-<k>.pt` for pruning rounds."""
    own = _checkpoint(out, stage)
    return [p for p in own.parent.glob("*.pt") if p == own or p.name.startswith(f"{own.stem}-round-")]


def _fit_info(result) -> dict:
    return {"history": result.history, "best_epoch": result.best_epoch,
            "best_val_accuracy": result.best_val_accuracy}


def _teacher_spec(recipe: Recipe, name: str):
    return recipe.teacher if name == "teacher" else next(t for t in recipe.teachers if t.name == name)


def _teacher(state: RunState, name: str = "teacher") -> Artifact:
    spec = _teacher_spec(state.recipe, name)
    torch.manual_seed(state.recipe.seed)
    model = state.create(spec)
    if spec.checkpoint:
        load_checkpoint(model, spec.checkpoint)
        state.log(f"[{name}] loaded {spec.checkpoint}")
        info = {"checkpoint": spec.checkpoint}
    else:
        from torchslim.training import fit

        info = _fit_info(fit(model, state.data.train, state.data.val, spec.train, seed=state.recipe.seed,
                             checkpoint=state.checkpoint(name), stage=name, log=state.log))
    path = state.save(model, name, {"model": spec.model, "args": spec.args})
    return Artifact(name, "teacher", "pytorch", path, model.eval(), info)


@STAGES.register("train", help="train the student on labels alone")
def _train(st, state: RunState, seed: int) -> Artifact:
    from torchslim.training import fit

    torch.manual_seed(seed)
    model = state.create(state.recipe.student)
    info = _fit_info(fit(model, state.data.train, state.data.val, st.train, seed=seed,
                         checkpoint=state.checkpoint(stage_name(st)), stage=stage_name(st), log=state.log))
    return _pytorch_artifact(st, state, model, info)


@STAGES.register("distill", help="train the student from the teacher(s): Hinton KD, or a list of losses "
                                  "(`torchslim list losses`)")
def _distill(st, state: RunState, seed: int) -> Artifact:
    from torchslim.distillation import KDConfig, distill, teacher_agreement

    torch.manual_seed(seed)
    model = state.create(state.recipe.student) if st.init == "fresh" else copy.deepcopy(state.model)
    kd = KDConfig(**st.model_dump(include=set(KDConfig.model_fields)))
    teachers = {name: state.teachers[name] for name in st.teachers or state.teachers}
    info = _fit_info(distill(model, teachers, state.data, kd, st.train, seed=seed,
                             checkpoint=state.checkpoint(stage_name(st)), stage=stage_name(st), log=state.log))
    info["kd"] = kd.model_dump()
    info["teachers"] = list(teachers)
    if st.init == "current":
        info["init_from"] = next((a.name for a in reversed(state.artifacts)
                                  if a.runtime == "pytorch" and a.model is state.model), None)
    if dist.is_main():
        # Top-1 agreement with the teacher(s) on the test set: how much of the teacher's function was transferred.
        info["teacher_agreement"] = teacher_agreement(model, teachers, state.data.test.tensors[0], kd)
        state.log(f"[{stage_name(st)}] top-1 agreement with the teacher on the test set: "
                  f"{100 * info['teacher_agreement']['combined']:.2f}%")
    return _pytorch_artifact(st, state, model, info)


@STAGES.register("datafree", help="distill the teacher without training images: DAFL generator, DeepInversion, "
                                  "few-data VAE, or Gaussian noise (the baseline)")
def _datafree(st, state: RunState, seed: int) -> Artifact:
    from torchslim.distillation.datafree import DataFreeConfig, distill_data_free, few_data_indices

    torch.manual_seed(seed)
    model = state.create(state.recipe.student)
    cfg = DataFreeConfig(**st.model_dump(include=set(DataFreeConfig.model_fields)))
    few = idx = None
    if cfg.method == "vae":
        idx = few_data_indices(len(state.data.train), cfg.vae.few_data, seed)
        few = state.data.train.tensors[0][idx]  # images only: their labels stay behind
    # The guard, by construction: besides the teacher, the function receives the validation split (evaluated only)
    # and, for vae alone, those few images. The training split is never passed.
    info = distill_data_free(model, state.teacher, cfg, st.train, input_shape=state.data.input_shape,
                             num_classes=state.data.num_classes, val=state.data.val, few_data=few, seed=seed,
                             checkpoint=state.checkpoint(stage_name(st)), stage=stage_name(st), log=state.log)
    if idx is not None:
        info["few_data_indices"] = idx.tolist()
    return _pytorch_artifact(st, state, model, info)


@STAGES.register("prune", help="pruning by a registered criterion: one-shot, iterative, gradual (AGP) or lottery "
                               "ticket, with masked fine-tuning")
def _prune(st, state: RunState, seed: int) -> Artifact:
    from torchslim.prune import PruneConfig, prune_
    from torchslim.training import fit

    cfg = PruneConfig(**st.model_dump(include=set(PruneConfig.model_fields)))
    model = copy.deepcopy(state.model)
    plan = _sensitivity_plan(st, state, cfg, model)  # None unless scope: sensitivity
    if cfg.schedule == "gradual":
        return _prune_gradual(st, state, cfg, model, plan, seed)
    if cfg.schedule == "lottery":
        return _prune_lottery(st, state, cfg, seed)
    rounds = []
    for k, target in enumerate(cfg.round_targets(), start=1):
        masks = prune_(model, cfg, sparsity=target if plan is None else _layer_levels(plan, target), data=state.data)
        state.log(f"[{stage_name(st)}] round {k}: pruned to {100 * masks.overall():.1f}% sparsity ({cfg.scope})")
        fitted = fit(model, state.data.train, state.data.val, st.train, seed=seed + k, after_step=masks.apply,
                     checkpoint=state.checkpoint(f"{stage_name(st)} round {k}"), extra_state=masks.masks,
                     stage=f"{stage_name(st)} round {k}", log=state.log) if st.train.epochs else None
        rounds.append({"target": target, "sparsity": masks.overall(), **(_fit_info(fitted) if fitted else {})})
    # Masked weights are exact zeros in the weight tensors themselves, so the sparsity is already permanent: the
    # saved model is an ordinary module with no mask buffers or hooks.
    info = {"sparsity": masks.sparsity(), "overall_sparsity": masks.overall(), "rounds": rounds,
            "prune": cfg.model_dump()}
    if plan is not None:
        info["sensitivity"] = plan
    if cfg.n_m is not None:
        from torchslim.prune.nm import nm_storage

        info["nm_storage"] = nm_storage(masks.layers, *cfg.n_m)
        state.log(f"[{stage_name(st)}] {cfg.pattern} storage: {info['nm_storage']['packed_bytes']:,} bytes of weights "
                  f"vs {info['nm_storage']['dense_bytes']:,} dense")
    return _pytorch_artifact(st, state, model, info)


def _prune_gradual(st, state: RunState, cfg, model: nn.Module, plan: dict | None, seed: int) -> Artifact:
    """schedule: gradual — one fine-tuning run whose masks follow the AGP ramp; resumable from its checkpoint (the
    masks and the step counter are saved with it)."""
    from torchslim.prune.schedules import gradual_prune

    name = stage_name(st)
    levels = (lambda s: _layer_levels(plan, s)) if plan is not None else None
    masks, fitted = gradual_prune(model, cfg, state.data, st.train, seed=seed + 1, checkpoint=state.checkpoint(name),
                                  stage=name, log=state.log, levels=levels)
    state.log(f"[{name}] gradual: {100 * cfg.initial_sparsity:.0f}% → {100 * masks.overall():.1f}% sparsity "
              f"({cfg.scope}, {cfg.criterion}, masks updated every {cfg.update_every} steps)")
    info = {"sparsity": masks.sparsity(), "overall_sparsity": masks.overall(), "prune": cfg.model_dump(),
            **_fit_info(fitted)}
    if plan is not None:
        info["sensitivity"] = plan
    return _pytorch_artifact(st, state, model, info)


def _fresh_model(state: RunState, seed: int) -> tuple[nn.Module, str]:
    """A new initialization of the current model's architecture, drawn from `seed`: from the recipe's model factory
    when it builds the same architecture (its own init, e.g. He init for ResNets), else PyTorch's default init of a
    copy (`reinitialize_`), e.g. after structured pruning changed the widths."""
    from torchslim.prune.schedules import reinitialize_

    spec = state.recipe.student if state.student else state.recipe.teacher
    if spec is not None:
        torch.manual_seed(seed)
        fresh = state.create(spec)
        shapes = {k: v.shape for k, v in fresh.state_dict().items()}
        if shapes == {k: v.shape for k, v in state.model.state_dict().items()}:
            return fresh, f"{spec.model} factory, seed {seed}"
    return reinitialize_(copy.deepcopy(state.model), seed), f"reset_parameters of the current model, seed {seed}"


def _prune_lottery(st, state: RunState, cfg, seed: int) -> Artifact:
    """schedule: lottery — retrains from scratch: the current model gives the architecture only, re-initialized from
    the stage seed (θ_0), then Frankle & Carbin's train / prune / rewind rounds; each round has its own checkpoint."""
    from torchslim.prune.schedules import lottery_ticket

    name = stage_name(st)
    model, how = _fresh_model(state, seed)
    state.log(f"[{name}] lottery ticket: retraining from a fresh initialization ({how}); {cfg.rounds} rounds at "
              f"{100 * cfg.lottery_rate:g}% per round ({100 * cfg.lottery_output_rate:g}% for the output layer), "
              f"rewinding to epoch {cfg.rewind_epoch}" + (", random re-init for the last round" if cfg.reinit else ""))
    result = lottery_ticket(model, cfg, state.data, st.train, seed=seed,
                            fresh_init=lambda: _fresh_model(state, seed + 1)[0].state_dict(),
                            checkpoint=lambda k: state.checkpoint(f"{name} round {k}"), stage=name, log=state.log)
    info = {"sparsity": result.masks.sparsity(), "overall_sparsity": result.masks.overall(), "init": how,
            "rounds": result.rounds, "prune": cfg.model_dump(), **_fit_info_of(result.rounds[-1])}
    return _pytorch_artifact(st, state, model, info)


def _fit_info_of(record: dict) -> dict:
    return {k: record[k] for k in ("history", "best_epoch", "best_val_accuracy")}


def _sensitivity_plan(st, state: RunState, cfg, model: nn.Module) -> dict | None:
    """scope: sensitivity — prune each layer alone on the incoming model, then choose one sparsity per layer."""
    if cfg.scope != "sensitivity":
        return None
    from torchslim.prune.sensitivity import sensitivity_plan

    plan = sensitivity_plan(model, state.data, cfg)
    levels = ", ".join(f"{name} {100 * s:.1f}%" for name, s in plan["sparsities"].items())
    state.log(f"[{stage_name(st)}] sensitivity on {plan['samples']} val rows "
              f"(dense {100 * plan['dense_accuracy']:.2f}%): tolerance {plan['tolerance_points']:.2f} points → {levels}")
    return plan


def _layer_levels(plan: dict, round_target: float) -> dict[str, float]:
    """Each layer's sparsity for a round whose overall target is `round_target`: the schedule, per layer."""
    from torchslim.prune.sensitivity import round_sparsities

    return round_sparsities(plan["sparsities"], round_target, plan["target"])


@STAGES.register("finetune", help="train the current model further on labels, keeping its zeros")
def _finetune(st, state: RunState, seed: int) -> Artifact:
    from torchslim.prune import Masks, prunable_layers
    from torchslim.training import fit

    model = copy.deepcopy(state.model)
    layers = prunable_layers(model)
    masks = Masks(layers, {n: (m.weight != 0).float() for n, m in layers.items()})
    sparse = masks.overall() > 0.01  # a dense model has no zeros worth holding
    info = _fit_info(fit(model, state.data.train, state.data.val, st.train, seed=seed,
                         after_step=masks.apply if sparse else None, extra_state=masks.masks if sparse else None,
                         checkpoint=state.checkpoint(stage_name(st)), stage=stage_name(st), log=state.log))
    if sparse:
        info.update(sparsity=masks.sparsity(), overall_sparsity=masks.overall())
    return _pytorch_artifact(st, state, model, info)


@STAGES.register("prune_channels", help="structured pruning: remove whole channels down to a MACs target "
                                        "(Torch-Pruning's dependency graph), fine-tuning after each round")
def _prune_channels(st, state: RunState, seed: int) -> Artifact:
    from torchslim.evaluation import count_macs, count_params
    from torchslim.prune.structured import ChannelPruneConfig, prune_channels_
    from torchslim.training import fit

    name = stage_name(st)
    cfg = ChannelPruneConfig(**st.model_dump(include=set(ChannelPruneConfig.model_fields)))
    model = copy.deepcopy(state.model)
    shape = state.data.input_shape
    macs, params = count_macs(model, shape), count_params(model)[0]
    widths, rounds = None, []
    for k, target in enumerate(cfg.round_targets(macs), start=1):
        pruned = prune_channels_(model, cfg, torch.zeros(1, *shape), data=state.data, target_macs=target)
        widths = widths or {layer: c[0] for layer, c in pruned["channels"].items()}
        state.log(f"[{name}] round {k}: {pruned['macs_after']:,} MACs ({macs / pruned['macs_after']:.2f}x fewer), "
                  f"{pruned['params_after']:,} parameters ({cfg.importance}, {cfg.scope})")
        # Pruning is deterministic, so a resumed run rebuilds the same shapes before its round checkpoint loads.
        fitted = fit(model, state.data.train, state.data.val, st.train, seed=seed + k,
                     checkpoint=state.checkpoint(f"{name} round {k}"), stage=f"{name} round {k}",
                     log=state.log) if st.train.epochs else None
        rounds.append({"target_macs": target, "macs": pruned["macs_after"], "params": pruned["params_after"],
                       **(_fit_info(fitted) if fitted else {})})
    info = {"macs_before": macs, "macs_after": rounds[-1]["macs"], "macs_reduction": macs / rounds[-1]["macs"],
            "params_before": params, "params_after": rounds[-1]["params"],
            "channels": {layer: [widths[layer], c[1]] for layer, c in pruned["channels"].items()},
            "rounds": rounds, "prune_channels": cfg.model_dump()}
    return _pytorch_artifact(st, state, model, info)


@STAGES.register("share", help="Deep Compression k-means weight sharing with centroid fine-tuning")
def _share(st, state: RunState, seed: int) -> Artifact:
    from torchslim.prune import CodebookConfig, finetune_codebooks, share_weights_

    cfg = CodebookConfig(**st.model_dump(include=set(CodebookConfig.model_fields)))
    model = copy.deepcopy(state.model)
    books = share_weights_(model, cfg)
    info: dict = {"codebook": cfg.model_dump(), "bits": {name: b.bits for name, b in books.items()}}
    if st.train.epochs:
        books, fitted = finetune_codebooks(model, books, state.data.train, state.data.val, st.train, seed=seed,
                                           bias_dtype=cfg.bias_dtype, stage=stage_name(st), log=state.log)
        info.update(_fit_info(fitted))
    state.codebooks = books
    return _pytorch_artifact(st, state, model, info)


@STAGES.register("export", help="export the current model: fp32 ONNX (verified) or a Deep Compression file")
def _export(st, state: RunState, seed: int) -> Artifact:
    from torchslim.export import export_onnx, verify_onnx

    if st.format == "compressed":
        from torchslim.export import load_compressed, save_compressed

        path = state.out / f"{stage_name(st)}.tsdc"
        sizes = save_compressed(state.model, path, state.codebooks)
        # Evaluate the file that ships: a fresh copy of the architecture, loaded from it.
        shipped = load_compressed(path, copy.deepcopy(state.model))
        state.log(f"[{stage_name(st)}] compressed file {sizes['file_bytes']:,} bytes, "
                  f"{sizes['ratio']:.1f}x smaller than fp32")
        info = {"format": "compressed", "ratio_vs_fp32_state_dict": sizes["ratio"],
                "fixed_width_bytes": sizes.get("fixed_width_bytes"), "lzma_bytes": sizes.get("lzma_bytes")}
        return Artifact(stage_name(st), st.type, "pytorch", path, shipped.eval(), info)

    path = export_onnx(state.model, state.out / f"{stage_name(st)}.onnx", state.data.input_shape, opset=st.opset)
    info = {"opset": st.opset}
    if st.verify:
        info["verification"] = verify_onnx(state.model, path, state.data.test.tensors[0],
                                           threads=state.recipe.evaluate.threads)
        v = info["verification"]
        state.log(f"[{stage_name(st)}] ONNX vs PyTorch on {v['samples']} test inputs: max |Δlogit| "
                  f"{v['max_abs_diff']:.2e}, top-1 agreement {100 * v['top1_agreement']:.2f}%")
    return Artifact(stage_name(st), st.type, "onnxruntime", path, state.model, info)


@STAGES.register("quantize", help="int8 post-training quantization (static QDQ or dynamic) for ONNX Runtime")
def _quantize(st, state: RunState, seed: int) -> Artifact:
    from torchslim.quant import DynamicInt8Config, StaticInt8Config, quantize

    cfg = (StaticInt8Config(**st.model_dump(include=set(StaticInt8Config.model_fields))) if st.mode == "static"
           else DynamicInt8Config(per_channel=st.per_channel))
    art = quantize(state.model, cfg, state.data, state.out / f"{stage_name(st)}.onnx", name=stage_name(st), seed=seed)
    v = art.info["verification"]
    state.log(f"[{art.name}] int8 ({st.mode}) vs fp32 PyTorch on {v['samples']} test inputs: "
              f"top-1 agreement {100 * v['top1_agreement']:.2f}%")
    return art


@STAGES.register("ptq", help="torchslim's own 2-8 bit post-training quantization, exported as QDQ ONNX")
def _ptq(st, state: RunState, seed: int) -> Artifact:
    from torchslim.quant import QuantConfig, ptq

    cfg = QuantConfig(**st.model_dump(include=set(QuantConfig.model_fields)))
    qm = ptq(state.model, cfg, state.data.train.tensors[0], seed=seed)
    return _quantized_artifact(st, state, qm, {"quant": cfg.model_dump()})


@STAGES.register("qat", help="quantization-aware training (optionally distilled), exported as QDQ ONNX")
def _qat(st, state: RunState, seed: int) -> Artifact:
    from torchslim.distillation import KDConfig
    from torchslim.quant import QuantConfig, qat

    cfg = QuantConfig(**st.model_dump(include=set(QuantConfig.model_fields)))
    kd = KDConfig(temperature=st.temperature, alpha=st.alpha) if st.distill else None
    qm, fitted = qat(state.model, cfg, state.data, st.train, teacher=state.model if st.distill else None, kd=kd,
                     seed=seed, checkpoint=state.checkpoint(stage_name(st)), stage=stage_name(st), log=state.log)
    if not dist.is_main():
        return Artifact(stage_name(st), st.type, "onnxruntime", state.out / f"{stage_name(st)}.onnx", state.model)
    return _quantized_artifact(st, state, qm, {"quant": cfg.model_dump(), **_fit_info(fitted)})


@STAGES.register("mixed", help="mixed-precision weights from per-layer sensitivity (size budget or accuracy tolerance)")
def _mixed(st, state: RunState, seed: int) -> Artifact:
    from torchslim.quant import QuantConfig, ptq
    from torchslim.quant.sensitivity import (accuracy_aware, allocate_bits, config_for, layer_sensitivity,
                                             weight_bytes)

    cfg = QuantConfig(**st.model_dump(include=set(QuantConfig.model_fields)))
    split = "val" if state.data.val is not None else "test"
    rows = layer_sensitivity(state.model, cfg, state.data, bits=[b for b in st.choices if b < 32], split=split,
                             seed=seed)
    info: dict = {"quant": cfg.model_dump(), "sensitivity": rows, "split": split}
    if st.budget is not None:
        budget = st.budget * weight_bytes(state.model, 8)
        bits = allocate_bits(state.model, rows, budget, st.choices)
        cfg = config_for(cfg, bits)
        info.update(budget_bytes=budget)
    else:
        cfg, trials = accuracy_aware(state.model, cfg, state.data, st.tolerance_points, sensitivity_rows=rows,
                                     split=split, seed=seed, log=state.log)
        bits = next(t["bits"] for t in trials if t["config"] == cfg.model_dump())
        info.update(trials=trials)
    info.update(bits=bits, weight_bytes=weight_bytes(state.model, bits), int8_weight_bytes=weight_bytes(state.model, 8))
    state.log(f"[{stage_name(st)}] weight bits per layer: {bits}")
    qm = ptq(state.model, cfg, state.data.train.tensors[0], seed=seed)
    return _quantized_artifact(st, state, qm, info)


def _quantized_artifact(st, state: RunState, qm: nn.Module, info: dict) -> Artifact:
    """Export a fake-quant model with its own scales and check ONNX Runtime against it and against fp32."""
    from torchslim.export import compare_logits, ort_logits, ort_session
    from torchslim.quant import export_qdq, ort_kernels
    from torchslim.training import predict

    path = export_qdq(qm, state.out / f"{stage_name(st)}.onnx", state.data.input_shape, opset=st.opset)
    x = state.data.test.tensors[0]
    onnx_logits = ort_logits(ort_session(path, state.recipe.evaluate.threads), x)
    info["verification"] = compare_logits(predict(qm, x).numpy(), onnx_logits)  # ORT vs the fake-quant model
    info["vs_fp32"] = compare_logits(predict(state.model, x).numpy(), onnx_logits)
    info["kernels"] = ort_kernels(path)
    state.log(f"[{stage_name(st)}] ONNX Runtime vs fake-quant model: top-1 agreement "
              f"{100 * info['verification']['top1_agreement']:.2f}%; vs fp32: {100 * info['vs_fp32']['top1_agreement']:.2f}%")
    return Artifact(stage_name(st), st.type, "onnxruntime", path, state.model, info)


# Stages whose artifact is a PyTorch model.
TRAINING_STAGES = ("train", "distill", "prune", "finetune", "share", "datafree", "prune_channels")
EVERY_RANK = TRAINING_STAGES + ("qat",)  # the ones every rank must run under torchrun


def _pytorch_artifact(st, state: RunState, model: nn.Module, info: dict) -> Artifact:
    path = state.save(model, stage_name(st), {"stage": st.type, "model": state.recipe.student.model
                                              if st.type in ("train", "distill", "datafree") else None})
    return Artifact(stage_name(st), st.type, "pytorch", path, model.eval(), info)


def _reload(st, state: RunState, done: dict) -> Artifact:
    """A finished stage's artifact, rebuilt from its files instead of being recomputed."""
    path, info = Path(done["path"]), done["info"]
    if st is None:  # a teacher
        name = path.stem
        model = state.create(_teacher_spec(state.recipe, name))
        return Artifact(name, "teacher", "pytorch", path, load_checkpoint(model, path).eval(), info)
    if st.type in TRAINING_STAGES:
        fresh = st.type in ("train", "datafree") or (st.type == "distill" and st.init == "fresh")
        model = state.create(state.recipe.student) if fresh else copy.deepcopy(state.model)
        if not fresh:  # prune_channels removed channels: give the layers the saved shapes before loading
            from torchslim.prune.structured import resize_to_state_dict_

            resize_to_state_dict_(model, load_state_dict(path))
        return Artifact(stage_name(st), st.type, "pytorch", path, load_checkpoint(model, path).eval(), info)
    if path.suffix == ".tsdc":
        from torchslim.export import load_compressed

        return Artifact(stage_name(st), st.type, "pytorch", path, load_compressed(path, copy.deepcopy(state.model)), info)
    return Artifact(stage_name(st), st.type, "onnxruntime", path, state.model, info)


def _start(recipe: Recipe, out: Path, resume: bool) -> dict:
    """Prepare the run folder; return the finished stages recorded by an earlier, interrupted run."""
    progress = out / "progress.json"
    saved = out / "recipe.yaml"
    done: dict = {}
    stale_checkpoints: list[str] = []
    if resume:
        if not saved.is_file():
            raise TorchslimError(f"--resume: {out} holds no earlier run (no recipe.yaml); drop --resume to start one")
        done = json.loads(progress.read_text()) if progress.is_file() else {}
        stale_checkpoints = _resumable(yaml.safe_load(saved.read_text()), recipe.model_dump(mode="json"), done, saved)
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.rglob(".*.tmp"):  # left by a kill in the middle of a write; never a finished file
            stale.unlink()
        old = [progress, *(out / "checkpoints").glob("*.pt")] if not resume else \
            [p for name in stale_checkpoints for p in _checkpoints_of(out, name)]
        for path in old:
            path.unlink(missing_ok=True)
        atomic_write_text(saved, dump_recipe(recipe))
    dist.barrier()
    return done


def _resumable(before: dict, now: dict, done: dict, saved: Path) -> list[str]:
    """Check that a resumed run only changes what has not run yet; return stages whose checkpoints are stale.

    Everything a finished stage depended on (version, seed, data, teacher, student, the finished stages) must be
    unchanged. Unfinished stages may change — e.g. a lower learning rate after a NaN — and then restart from
    their first epoch.
    """
    def refuse(what: str) -> TorchslimError:
        return TorchslimError(f"--resume: {what} differs from the run in {saved.parent} ({saved}), and finished work "
                              f"depends on it; use a new --out, or drop --resume to start over")

    changed = [key for key in ("version", "seed", "data", "teacher", "teachers", "student")
               if (before.get(key) or None) != (now.get(key) or None)]  # `teachers: []` and no key are the same
    if changed and done:
        raise refuse(changed[0])
    old_stages = before.get("stages", [])
    stale = (["teacher"] + [t["name"] for t in now.get("teachers") or []]) if changed else []
    for i, st in enumerate(now["stages"]):
        name = st["name"] or st["type"]
        same = not changed and i < len(old_stages) and old_stages[i] == st
        if name in done and not same:
            raise refuse(f"stages[{i}] ({name})")
        if not same:
            stale.append(name)
    return stale


def _load_data(recipe: Recipe):
    from torchslim.data import load_dataset

    d = recipe.data
    return load_dataset(d.name, d.root, val_size=d.val_size, pad_to=d.pad_to, limit_train=d.limit_train,
                        limit_test=d.limit_test)


def check_recipe(recipe: Recipe) -> dict:
    """Everything short of training: load the data and build the teacher and student, so that a bad model
    argument or a missing data file shows up before any work starts. Returns a short summary."""
    data = _load_data(recipe)
    state = RunState(recipe, Path("."), data, lambda m: None)
    summary = {"data": data.name, "train": len(data.train), "test": len(data.test),
               "input_shape": list(data.input_shape), "num_classes": data.num_classes}
    for role in ("teacher", "student"):
        spec = getattr(recipe, role)
        if spec is not None:
            try:
                model = state.create(spec)
            except TorchslimError as e:
                raise TorchslimError(f"{role}: {e}") from None
            summary[role] = {"model": spec.model, "params": sum(p.numel() for p in model.parameters())}
    for i, spec in enumerate(recipe.teachers):
        try:
            model = state.create(spec)
        except TorchslimError as e:
            raise TorchslimError(f"teachers[{i}]: {e}") from None
        summary.setdefault("teachers", {})[spec.name] = {"model": spec.model,
                                                          "params": sum(p.numel() for p in model.parameters())}
    _check_distill_stages(recipe, data)
    _check_datafree_stages(recipe, state)
    return summary


def _check_distill_stages(recipe: Recipe, data) -> None:
    """Build every distill stage's objective on untrained models and a few training rows: unknown module names
    (with a did-you-mean) and features that cannot be matched show up before any training."""
    from torchslim.distillation import KDConfig, build_objective

    state = RunState(recipe, Path("."), data, lambda m: None)
    for i, st in enumerate(recipe.stages):
        if st.type != "distill" or not (st.losses or len(st.teachers or recipe.teacher_names()) > 1):
            continue
        kd = KDConfig(**st.model_dump(include=set(KDConfig.model_fields)))
        x, y = data.train.tensors[:2]
        with torch.random.fork_rng(devices=[]):  # the run's random stream must not depend on this check
            teachers = {n: state.create(_teacher_spec(recipe, n)).eval() for n in st.teachers or recipe.teacher_names()}
            try:
                build_objective(state.create(recipe.student), teachers, kd, x[:8], y)
            except TorchslimError as e:
                raise TorchslimError(f"stages[{i}] ({stage_name(st)}): {e}") from None


def _check_datafree_stages(recipe: Recipe, state: RunState) -> None:
    """A datafree stage that cannot work (deepinversion without BatchNorm, a DAFL feature layer the teacher lacks,
    an input size the generator cannot make, more few-data images than the training split) fails here, before the
    teacher is trained."""
    from torchslim.distillation.datafree import DataFreeConfig, check_data_free

    for i, st in enumerate(recipe.stages):
        if st.type == "datafree" and recipe.teacher is not None:
            with torch.random.fork_rng(devices=[]):
                teacher = state.create(recipe.teacher)
            try:
                check_data_free(DataFreeConfig(**st.model_dump(include=set(DataFreeConfig.model_fields))), teacher,
                                state.data.input_shape, n_train=len(state.data.train), teacher_name=recipe.teacher.model)
            except TorchslimError as e:
                raise TorchslimError(f"stages[{i}] ({stage_name(st)}): {e}") from None


def run_recipe(recipe: Recipe, out: str | Path, log: Log = print, resume: bool = False) -> dict | None:
    """Run every stage of `recipe` into the folder `out`, evaluate all artifacts, write the report; return it.

    With `resume`, finished stages are reloaded from `out` and the interrupted one continues from its last epoch.
    Under torchrun, ranks other than 0 train alongside and return None.

    Example:
        >>> report = run_recipe(load_recipe("recipes/digits.yaml"), "runs/demo")   # doctest: +SKIP
    """
    from torchslim.evaluation import LatencyConfig, build_report, evaluate, write_report

    dist.init()
    log = log if dist.is_main() else (lambda msg: None)
    out = Path(out)
    done = _start(recipe, out, resume)
    torch.manual_seed(recipe.seed)
    data = _load_data(recipe)
    log(f"data: {recipe.data.name} from {data.source}: {len(data.train)} train / {len(data.val) if data.val else 0} val / "
        f"{len(data.test)} test, input {tuple(data.input_shape)}, {data.num_classes} classes"
        + (f"; {dist.world()} processes" if dist.world() > 1 else ""))
    state = RunState(recipe, out, data, log)
    _check_distill_stages(recipe, data)
    _check_datafree_stages(recipe, state)

    steps = [(None, name, (lambda name=name: _teacher(state, name))) for name in recipe.teacher_names()]
    steps += [(st, stage_name(st), (lambda st=st, i=i: STAGES.get(st.type)(st, state, recipe.seed + i + 1)))
              for i, st in enumerate(recipe.stages)]
    for st, name, run in steps:
        t0 = time.perf_counter()
        if name in done:
            art = _reload(st, state, done[name])
            log(f"[{name}] finished in an earlier run: reloaded {art.path.name}")
        elif st is not None and st.type not in EVERY_RANK and not dist.is_main():
            continue  # export/quantize/ptq write files and change no weights: rank 0 alone runs them
        else:
            art = run()
            if dist.is_main():
                done[name] = {"path": str(art.path), "info": art.info}
                atomic_write_json(out / "progress.json", done)
                for ckpt in _checkpoints_of(out, name):
                    ckpt.unlink()
            dist.barrier()
        if st is None:
            state.teacher = art.model if state.teacher is None else state.teacher
            state.teachers[name] = art.model
        elif st.type in ("train", "distill", "datafree"):
            state.student = state.student or name
        if art.runtime == "pytorch" and (st is not None or state.model is None):  # the first teacher is current
            state.model = art.model
        state.artifacts.append(art)
        state.seconds[name] = time.perf_counter() - t0

    if not dist.is_main():
        return None
    ev = recipe.evaluate
    log(f"evaluating {len(state.artifacts)} artifacts (threads={ev.threads}, batch sizes {ev.batch_sizes})")
    latency = LatencyConfig(threads=ev.threads, batch_sizes=tuple(ev.batch_sizes), max_seconds=ev.max_seconds)
    records = evaluate(state.artifacts, data, latency=latency,
                       teacher=(recipe.teacher_names() or [None])[0], student=state.student)
    report = build_report(records, recipe=recipe.model_dump(mode="json"), data=data, threads=ev.threads,
                          meta={"stage_seconds": state.seconds, "processes": dist.world()}, latency=latency)
    write_report(report, out)
    return report
