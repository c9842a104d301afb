"""fit's hooks for methods that make their own inputs: a stateful batch source (checkpointed with the model,
told the epoch, reporting its own numbers), StopTraining, and per-rank sources under torchrun."""
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from torchslim.training import StopTraining, TrainConfig, fit, loop

QUIET = {"log": lambda m: None}
VAL = TensorDataset(torch.randn(32, 4, generator=torch.Generator().manual_seed(9)), torch.randint(2, (32,)))


class Source:
    """Five batches per epoch drawn from a generator it owns: what it draws next depends on its state."""

    def __init__(self, seed: int = 0, stop_at: tuple[int, int] | None = None) -> None:
        self.gen, self.drawn, self.epochs, self.stop_at = torch.Generator().manual_seed(seed), 0, [], stop_at

    def __len__(self):
        return 5

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __iter__(self):
        for step in range(1, 6):
            if (self.epochs[-1], step) == self.stop_at:
                raise StopTraining(f"nothing left to learn at epoch {self.epochs[-1]}, step {step}")
            x = torch.randn(8, 4, generator=self.gen)
            self.drawn += 1
            yield x, (x.sum(1) > 0).long()

    def metrics(self):
        return {"drawn": float(self.drawn)}

    def state_dict(self):
        return {"rng": self.gen.get_state(), "drawn": self.drawn}

    def load_state_dict(self, state):
        self.gen.set_state(state["rng"])
        self.drawn = state["drawn"]


class Stateless(Source):
    state_dict = load_state_dict = None


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(4, 2)


def test_a_stateful_source_is_checkpointed_so_a_resumed_run_draws_the_same_batches(tmp_path):
    cfg, ckpt = TrainConfig(epochs=3, lr=0.05, keep="last"), tmp_path / "c.pt"
    whole, source = _model(), Source()
    result = fit(whole, source, VAL, cfg, **QUIET)
    assert source.epochs == [1, 2, 3] and [h["terms"]["drawn"] for h in result.history] == [5, 10, 15]
    fit(_model(), Source(), VAL, cfg.model_copy(update={"epochs": 1}), checkpoint=ckpt, **QUIET)
    resumed, source = _model(1), Source()  # a fresh process: other weights, a source at its first draw
    result = fit(resumed, source, VAL, cfg, checkpoint=ckpt, **QUIET)
    assert source.epochs == [2, 3] and [h["epoch"] for h in result.history] == [1, 2, 3]
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))
    assert torch.load(ckpt, weights_only=True)["train_set"]["drawn"] == 15
    # Without its state the resumed source draws epoch 1's batches again: the student comes out different.
    ckpt.unlink()
    fit(_model(), Stateless(), VAL, cfg.model_copy(update={"epochs": 1}), checkpoint=ckpt, **QUIET)
    forgetful = _model(1)
    fit(forgetful, Stateless(), VAL, cfg, checkpoint=ckpt, **QUIET)
    assert not torch.equal(forgetful.weight, whole.weight)


@pytest.mark.parametrize("keep", ["best", "last"])
def test_stop_training_drops_the_interrupted_epoch_and_keeps_weights_as_after_a_last_one(keep, tmp_path):
    logs, ckpt = [], tmp_path / "c.pt"
    after_one = _model()
    fit(after_one, Source(), VAL, TrainConfig(epochs=1, lr=0.05), **QUIET)
    model = _model()
    result = fit(model, Source(stop_at=(2, 3)), VAL, TrainConfig(epochs=4, lr=0.05, keep=keep), checkpoint=ckpt,
                 log=logs.append)
    assert [h["epoch"] for h in result.history] == [1] and result.best_epoch == 1
    assert result.stopped == "nothing left to learn at epoch 2, step 3"
    assert "[train] stopped: nothing left to learn at epoch 2, step 3" in logs
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1  # the interrupted epoch was not checkpointed
    # keep="best": epoch 1's weights; keep="last": those after the two steps epoch 2 took before it stopped.
    assert torch.equal(model.weight, after_one.weight) == (keep == "best")


def test_stop_training_from_after_step():
    steps = []

    def count():
        steps.append(1)
        if len(steps) == 7:
            raise StopTraining("budget spent")

    result = fit(_model(), Source(), None, TrainConfig(epochs=3), after_step=count, **QUIET)
    assert result.stopped == "budget spent" and len(result.history) == 1 and len(steps) == 7


def test_a_per_rank_source_is_not_sharded_again_under_torchrun(monkeypatch):
    class PerRank(list):
        per_rank = True

    batches = PerRank((torch.full((2, 1), float(i)), torch.zeros(2, dtype=torch.long)) for i in range(5))
    monkeypatch.setattr(loop.dist, "world", lambda: 2)
    monkeypatch.setattr(loop.dist, "rank", lambda: 1)
    steps = loop._loader_steps(batches)
    assert steps == 5
    assert [int(x[0, 0]) for x, *_ in loop._epoch_batches(batches, 2, torch.Generator(), 1, steps)] == [0, 1, 2, 3, 4]
