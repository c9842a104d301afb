import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # small models: one thread is fastest and keeps timings stable under pytest-xdist-free runs


@pytest.fixture
def data_root() -> Path:
    root = Path(os.environ.get("TORCHSLIM_DATA", SHARED_DATA))
    if not (root / "mnist").is_dir():
        pytest.skip(f"MNIST not found under {root}; set TORCHSLIM_DATA")
    return root
