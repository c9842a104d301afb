"""A user's own model, data and teacher, each wrong in a way people get wrong: one line, exit code 2, no traceback."""
import pytest
import torch
import yaml
from torch import nn

from torchslim.cli import main


def _csv(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _onnx_with_outputs(tmp_path, outputs):
    path = tmp_path / "teacher.onnx"
    torch.onnx.export(nn.Sequential(nn.Flatten(), nn.Linear(64, outputs)), (torch.zeros(1, 1, 8, 8),), str(path),
                      dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return str(path)


CASES = {
    "factory does not import": (
        lambda tmp: {"teacher": {"factory": "no_such_module:build"}},
        "teacher.factory: factory 'no_such_module:build': cannot import module 'no_such_module'"),
    "factory function misspelt": (
        lambda tmp: {"teacher": {"factory": "torchslim.models.mlp:MPL"}},
        "has no 'MPL' (did you mean 'MLP'?)"),
    "factory not module:function": (
        lambda tmp: {"teacher": {"factory": "my_models.build"}},
        "expected 'module:function'"),
    "csv without the named column": (
        lambda tmp: {"data": {"name": "csv", "path": _csv(tmp, "sentence,label\nok,1\nbad,0\n"),
                              "text_column": "review"}},
        "'review'"),
    "empty text file": (
        lambda tmp: {"data": {"name": "csv", "path": _csv(tmp, "")}},
        "data.csv"),
    "a single class": (
        lambda tmp: {"data": {"name": "csv",
                              "path": _csv(tmp, "text,label\n" + "".join(f"row {i},pos\n" for i in range(20)))}},
        "hold a single class ('pos')"),
    "onnx teacher with the wrong number of outputs": (
        lambda tmp: {"data": {"name": "digits"}, "teacher": {"onnx": _onnx_with_outputs(tmp, 3)}},
        "the data has 10 classes"),
    "image model on text data": (
        lambda tmp: {"data": {"name": "csv",
                              "path": _csv(tmp, "text,label\n" + "".join(f"w{i % 5},{i % 2}\n" for i in range(20)))},
                     "teacher": {"model": "lenet5"}},
        "models for it: bert, bilstm, textcnn"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_own_input_is_one_line_and_exit_2(case, tmp_path, capsys):
    make, expected = CASES[case]
    recipe = {"data": {"name": "csv"}, "teacher": {"model": "textcnn", "train": {"epochs": 1}}, "stages": []}
    recipe.update(make(tmp_path))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert expected in err, err
