"""Files on disk: atomic writes, and checkpoints that load without unpickling (safetensors + JSON).

Every artifact torchslim writes goes through :func:`atomic_path`: the bytes land in a temporary file in the same
folder and are renamed over the target only once complete, so a crash never leaves a half-written file behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.errors import TorchslimError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` if the block succeeds.

    Example:
        >>> with atomic_path("out/model.onnx") as tmp:   # doctest: +SKIP
        ...     torch.onnx.export(model, x, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:  # flush to disk before the rename makes it visible
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes owner-only files; give the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def resume_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn any failure while reading a stage's resume checkpoint (damaged, foreign, wrong shapes) into one line
    that names the file and what to do.

    Example:
        >>> with resume_errors("run/train.ckpt"):   # doctest: +SKIP
        ...     state = torch.load("run/train.ckpt", map_location="cpu", weights_only=True)
    """
    try:
        yield
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file: say which and stop
        raise TorchslimError(f"cannot resume from {path}: {type(e).__name__}: {str(e).splitlines()[0][:160]}; "
                             f"delete it to restart the stage") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_checkpoint(model: nn.Module, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write ``model``'s state dict as safetensors (the file a user ships) and ``meta`` beside it as JSON."""
    from safetensors.torch import save_file

    path = Path(path)
    # safetensors refuses tensors that share memory; clone so tied or viewed weights still save.
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        # One metadata key only: safetensors writes the metadata map in hash order, and identical weights must give
        # byte-identical files (same seed, same bytes, same lzma size in the report).
        save_file(state, str(tmp), metadata={"format": "pt"})
    if meta is not None:
        atomic_write_json(path.with_suffix(".json"), meta)
    return path


# Dicts that commonly wrap a state dict in a training script's checkpoint: {"model": state_dict, "epoch": 3, ...}.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(error: Exception, limit: int = 160) -> str:
    """The first line of an exception's message, without terminal colour codes, shortened at a word boundary."""
    text = _ANSI.sub("", str(error)).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if len(text) > limit and 0 < text.find(". ") < limit:
        text = text[: text.find(". ") + 1]  # the first sentence says what went wrong; the rest is advice for others
    elif len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    return text


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unreadable_torch_file(path: Path, e: Exception) -> TorchslimError:
    """A cut-short or damaged file is 'corrupt'; a whole file that needs unpickling Python objects is 'refused'."""
    text = _ANSI.sub("", str(e))
    if isinstance(e, EOFError) or any(s in text for s in ("truncated", "zip archive", "central directory")):
        return TorchslimError(f"corrupt checkpoint {path} (truncated or damaged): {_first_line(e)}")
    if isinstance(e, pickle.UnpicklingError) or "pickle" in text.lower():
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f"a pickled Python object ({found.group(1)})" if found else "pickled Python objects"
        return TorchslimError(f"refused checkpoint {path}: it holds {what}, not only tensors, and torchslim never "
                              f"unpickles (that can run code); save the weights alone: "
                              f"torch.save(model.state_dict(), path), or safetensors")
    return TorchslimError(f"corrupt checkpoint {path} (not a torch file): {_first_line(e)}")


def load_state_dict(path: str | os.PathLike, log: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint without executing code: safetensors, or a torch file with ``weights_only=True``.

    A torch file may hold the state dict itself or wrap it under one of :data:`WRAPPER_KEYS`
    (``{"model": state_dict, "epoch": 3}``); ``log`` is told which key the weights came from.

    Example:
        >>> state = load_state_dict("runs/demo/teacher.safetensors")   # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise TorchslimError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise TorchslimError(f"corrupt checkpoint {path} (truncated or not safetensors): {_first_line(e)}") from None
    if path.suffix in (".pt", ".pth", ".bin"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure here means the file is not a safe, whole state dict
            raise _unreadable_torch_file(path, e) from None
        if isinstance(state, dict) and not _is_tensor_dict(state):
            wrapped = [k for k in WRAPPER_KEYS if _is_tensor_dict(state.get(k))]
            if wrapped:
                if log is not None:
                    log(f"{path}: took the weights under the key '{wrapped[0]}'")
                state = state[wrapped[0]]
            else:
                inner = [str(k) for k, v in state.items() if _is_tensor_dict(v)]
                hint = (f"; the weights look to be under the key '{inner[0]}': save that alone "
                        f"(torch.save(checkpoint['{inner[0]}'], path)) or under 'state_dict'") if inner else ""
                keys = ", ".join(str(k) for k in list(state)[:6]) + (", ..." if len(state) > 6 else "")
                raise TorchslimError(f"checkpoint {path} is not a state dict of tensors: a dict with keys {keys}{hint}")
        if not _is_tensor_dict(state):
            raise TorchslimError(f"checkpoint {path} is not a state dict of tensors (it holds a {type(state).__name__})")
        return state
    raise TorchslimError(f"unsupported checkpoint format '{path.suffix}' for {path}; valid: .safetensors, .pt, .pth, .bin")


def load_checkpoint(model: nn.Module, path: str | os.PathLike, log: Callable[[str], None] | None = None) -> nn.Module:
    """Load weights into ``model``; a missing/extra key or a shape mismatch is a one-line TorchslimError.

    Example:
        >>> model = load_checkpoint(create_model("lenet5"), "lenet5.safetensors")   # doctest: +SKIP
    """
    state = load_state_dict(path, log=log)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing or extra:
        raise TorchslimError(
            f"checkpoint {path} does not fit the model: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}"
        )
    for k in own:  # model order, so the first layer that differs is the one named
        v = state[k]
        if v.shape != own[k].shape:
            raise TorchslimError(
                f"checkpoint {path} does not fit the model: '{k}' has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}"
            )
    model.load_state_dict(state)
    return model
