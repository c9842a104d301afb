import os
import pickle

import pytest
import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.io import atomic_path, load_checkpoint, load_state_dict, save_checkpoint


def test_safetensors_round_trip(tmp_path):
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    path = save_checkpoint(a, tmp_path / "m.safetensors", {"note": "x"})
    load_checkpoint(b, path)
    assert torch.equal(a.weight, b.weight) and (tmp_path / "m.json").is_file()


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    with pytest.raises(TorchslimError, match="corrupt checkpoint"):
        load_state_dict(p)


def test_shape_mismatch_names_the_tensor(tmp_path):
    path = save_checkpoint(nn.Linear(4, 3), tmp_path / "m.safetensors")
    with pytest.raises(TorchslimError, match=r"'weight' has shape \(3, 4\), model expects \(5, 4\)"):
        load_checkpoint(nn.Linear(4, 5), path)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_that_runs_code_is_refused_and_does_nothing(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"weight": _Evil(str(marker))}, f)
    with pytest.raises(TorchslimError, match="refused checkpoint"):
        load_state_dict(p)
    assert not marker.exists()


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_a_damaged_or_foreign_resume_checkpoint_is_one_clear_error(tmp_path, content):
    """io.resume_errors, which fit (and the data-free stage) read their resume checkpoints under: garbage bytes, or a
    real checkpoint of another model, end in one line naming the file, never a traceback from torch.load."""
    from torchslim.data import load_dataset
    from torchslim.models import create_model
    from torchslim.training import TrainConfig, fit

    data = load_dataset("digits")
    path = tmp_path / "train.ckpt"
    if content is None:  # a valid checkpoint of a wider model: load_state_dict fails on the shapes
        fit(create_model("mlp", input_shape=(1, 8, 8), widths=[16]), data.train, None, TrainConfig(epochs=1),
            checkpoint=path, log=lambda m: None)
    else:
        path.write_bytes(content)
    with pytest.raises(TorchslimError, match=r"cannot resume from .*train\.ckpt: \w+: .*delete it to restart"):
        fit(create_model("mlp", input_shape=(1, 8, 8), widths=[8]), data.train, None, TrainConfig(epochs=2),
            checkpoint=path, log=lambda m: None)
