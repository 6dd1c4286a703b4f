"""`plume coordinator create-task --initial FILE` (helper-278's item 7): a task starts from the
operator's own initial weights, a torch state_dict `.pt` (torch.load with weights_only=True),
an `.npz` (numpy.load without pickle) or a file get-model wrote, matched against the --model's
layout by name and shape before anything is sent. Before, create-task had no --initial: the
only initial weights it could send were the zoo or plugin model's own for --seed."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from coordinator.cli import main
from coordinator.service import AdminClient, ServerThread, ServiceConfig
from mobile_sim import models
from mobile_sim.models import build_model
from sdk.flat import get_flat_params

ADMIN = "h288-token"
PROG = "plume coordinator create-task"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("h288_server")
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as served:
        yield served


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLUME_DEBUG", raising=False)


def _sequential() -> nn.Module:
    """The zoo MLP's layers in a bare nn.Sequential (README's SDK example): `1.weight`, ..."""
    torch.manual_seed(288)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(),
                         nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))  # fmt: skip


def _state(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """A copy of `module`'s state_dict, each name with `prefix` in front."""
    return {prefix + k: v.detach().clone() for k, v in module.state_dict().items()}


def _savez(path: Path, **arrays: Any) -> None:
    """numpy.savez of `arrays` by name (typed loosely: numpy's stub reads the names as its
    keyword arguments)."""
    np.savez(path, **arrays)


def _create(url: str, *flags: str) -> list[str]:
    return ["coordinator", "create-task", "--url", url, "--admin-token", ADMIN, *flags]


def _tasks(url: str) -> int:
    with AdminClient(url, ADMIN) as admin:
        return len(admin.tasks())


def _created(url: str, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    """(task id, stderr) of a create-task that succeeded."""
    import json

    code = main(_create(url, *flags))
    out, err = capsys.readouterr()
    assert code == 0, err
    return int(json.loads(out)["task_id"]), err


def _exported_npz(url: str, task_id: int, out: Path) -> dict[str, np.ndarray]:
    """What `get-model --format npz` writes for the task, name -> array."""
    code = main(["coordinator", "get-model", "--url", url, "--admin-token", ADMIN,
                 "--task", str(task_id), "--out", str(out)])  # fmt: skip
    assert code == 0
    with np.load(out, allow_pickle=False) as z:
        return {name: z[name] for name in z.files}


def test_a_state_dict_pt_is_the_task_s_initial_model(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the README's nn.Sequential, "pre-trained" (seeded), saved as its state_dict,
    # whose names lack the zoo MLP's leading 'net.'
    model = _sequential()
    path = tmp_path / "pretrained.pt"
    torch.save(model.state_dict(), path)
    # Execute
    task_id, err = _created(url, capsys, "--model", "mlp", "--initial", str(path))
    got = _exported_npz(url, task_id, tmp_path / "v0.npz")
    # Assert: exactly those weights, under the task's names, and the renaming said
    assert f"{PROG}: note: --initial {path}: its tensor names lack the task's leading " in err
    assert "'1.weight' for 'net.1.weight'" in err
    want = _state(model, "net.")
    assert list(got) == list(want)
    for name, tensor in want.items():
        assert got[name].dtype == np.float32
        assert np.array_equal(got[name], tensor.numpy()), name


def test_an_npz_of_float64_arrays_is_converted_to_float32(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the task's own names, float64 values that float32 rounds
    rng = np.random.default_rng(288)
    arrays = {k: rng.normal(size=tuple(v.shape)) for k, v in _state(build_model("mlp")).items()}
    path = tmp_path / "pretrained.npz"
    _savez(path, **arrays)
    # Execute
    task_id, err = _created(url, capsys, "--model", "mlp", "--initial", str(path))
    got = _exported_npz(url, task_id, tmp_path / "v0.npz")
    # Assert: no note (the names are the task's), each value float32(value)
    assert err == ""
    assert list(got) == list(arrays)
    for name, values in arrays.items():
        assert np.array_equal(got[name], values.astype(np.float32)), name


@pytest.mark.parametrize("suffix", [".pt", ".npz", ".snap"])
def test_a_file_get_model_wrote_starts_a_task_with_the_same_model(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    # Prepare: a task from the zoo's mnist_cnn with seed 7, exported by get-model
    first, _ = _created(url, capsys, "--model", "mnist_cnn", "--seed", "7")
    out = tmp_path / f"v0{suffix}"
    assert main(["coordinator", "get-model", "--url", url, "--admin-token", ADMIN,
                 "--task", str(first), "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    # Execute: a second task, with another seed, from that file
    second, err = _created(
        url, capsys, "--model", "mnist_cnn", "--seed", "8", "--initial", str(out)
    )
    # Assert: the same model (digest) as the first task's, not seed 8's
    assert err == ""
    with AdminClient(url, ADMIN) as admin:
        a, b = admin.model(first), admin.model(second)
    assert a.digest == b.digest
    assert np.array_equal(b.params, get_flat_params(build_model("mnist_cnn", seed=7)))


def test_dataparallel_s_leading_module_is_removed_with_a_note(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a state_dict of the zoo MLP saved from inside nn.DataParallel: module.net.1.weight
    model = build_model("mlp", seed=3)
    path = tmp_path / "dp.pt"
    torch.save(_state(model, "module."), path)
    # Execute
    task_id, err = _created(url, capsys, "--model", "mlp", "--initial", str(path))
    # Assert
    assert "its tensor names have a leading 'module.' that the task's lack" in err
    with AdminClient(url, ADMIN) as admin:
        assert np.array_equal(admin.model(task_id).params, get_flat_params(model))


_PLUGIN = """\
from torch import nn

from mobile_sim.models import MODELS

MODELS["h288_bn"] = lambda: nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
"""


@pytest.fixture
def bn_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "h288_plugin.py").write_text(_PLUGIN)
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("h288_plugin", None)


def test_buffers_of_the_model_may_be_in_the_file_and_are_not_sent(
    url: str, bn_plugin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a BatchNorm model's state_dict: its running stats and int64
    # num_batches_tracked are buffers, not parameters of the task
    torch.manual_seed(1)
    norm = nn.BatchNorm1d(3)
    model = nn.Sequential(nn.Linear(4, 3), norm)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), bn_plugin / "bn.pt")
    # Execute
    task_id, err = _created(
        url, capsys, "--plugin", "h288_plugin", "--model", "h288_bn", "--initial", "bn.pt"
    )
    # Assert: the four parameters, nothing else
    assert err == ""
    with AdminClient(url, ADMIN) as admin:
        exported = admin.model(task_id)
    assert [e.name for e in exported.spec.entries] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert np.array_equal(exported.params, get_flat_params(model))


def _evil_pickle(path: Path, marker: Path) -> None:
    """A .pt whose unpickling would create `marker` (a full pickle runs os.mkdir)."""

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.mkdir, (str(marker),))

    torch.save({**_state(_sequential()), "hook": Evil()}, path)


def _with(changes: dict[str, Any]) -> dict[str, torch.Tensor]:
    state = _state(_sequential(), "net.")
    for name, value in changes.items():
        if value is None:
            del state[name]
        else:
            state[name] = value
    return state


def _nan_in(name: str, value: float) -> dict[str, torch.Tensor]:
    state = _state(_sequential(), "net.")
    state[name][0, 0] = value
    return state


def _float64_beyond() -> dict[str, torch.Tensor]:
    """float64 tensors, one holding 1e39 (float32 makes it inf)."""
    state = {k: v.double() for k, v in _state(_sequential(), "net.").items()}
    state["net.5.bias"] = torch.full((10,), 1e39, dtype=torch.float64)
    return state


# (file name, how to write it, what the one error line says after "--initial FILE: ")
_REFUSED: list[tuple[str, Any, str]] = [
    (
        "missing.pt",
        lambda p: torch.save(_with({"net.5.bias": None}), p),
        "it has no tensor 'net.5.bias', a parameter of the task's model; the task's are "
        "net.1.weight, net.1.bias, net.3.weight, net.3.bias, net.5.weight, net.5.bias",
    ),
    (
        "missing_bare.pt",
        lambda p: torch.save({k: v for k, v in _state(_sequential()).items() if k != "3.bias"}, p),
        "it has no tensor 'net.3.bias', a parameter of the task's model (reading its names "
        "with a leading 'net.' added); the task's are net.1.weight",
    ),
    (
        "extra.pt",
        lambda p: torch.save(_with({"net.7.weight": torch.zeros(2, 2)}), p),
        "tensor 'net.7.weight' is not a parameter of the task's model; the task's are net.1.weight",
    ),
    (
        "shape.pt",
        lambda p: torch.save(_with({"net.3.weight": torch.zeros(100, 200)}), p),
        "tensor 'net.3.weight' has shape (100, 200), the task's model (200, 200)",
    ),
    (
        "shape_bare.npz",
        lambda p: _savez(
            p,
            **{
                **{k: v.numpy() for k, v in _state(_sequential()).items()},
                "5.bias": np.zeros(9, np.float32),
            },  # fmt: skip
        ),
        "tensor '5.bias' (the task's 'net.5.bias') has shape (9,), the task's model (10,)",
    ),
    (
        "nan.pt",
        lambda p: torch.save(_nan_in("net.3.weight", float("nan")), p),
        "tensor 'net.3.weight' holds NaN or inf",
    ),  # fmt: skip
    (
        "inf.pt",
        lambda p: torch.save(_nan_in("net.1.weight", float("-inf")), p),
        "tensor 'net.1.weight' holds NaN or inf",
    ),  # fmt: skip
    (
        "beyond.pt",
        lambda p: torch.save(_float64_beyond(), p),
        "tensor 'net.5.bias' holds a value beyond float32's range (about 3.4e38)",
    ),
    (
        "beyond.npz",
        lambda p: _savez(p, **{k: v.numpy() for k, v in _float64_beyond().items()}),
        "array 'net.5.bias' holds a value beyond float32's range (about 3.4e38)",
    ),
    (
        "nan.npz",
        lambda p: _savez(
            p,
            **{
                k: np.full(tuple(v.shape), np.nan) for k, v in _state(_sequential(), "net.").items()
            },
        ),
        "array 'net.1.weight' holds NaN or inf",
    ),
    (
        "bool.pt",
        lambda p: torch.save(_with({"net.1.bias": torch.ones(200, dtype=torch.bool)}), p),
        "tensor 'net.1.bias' is torch.bool, not a real number type",
    ),
    (
        "int64.pt",
        lambda p: torch.save(
            _with({"net.1.bias": torch.full((200,), 2**24 + 1, dtype=torch.int64)}), p
        ),
        "tensor 'net.1.bias' is torch.int64: a parameter is a floating-point tensor",
    ),
    (
        "int32.npz",
        lambda p: _savez(
            p,
            **{
                k: (v.numpy().astype(np.int32) if k == "net.1.bias" else v.numpy())
                for k, v in _state(_sequential(), "net.").items()
            },
        ),
        "array 'net.1.bias' is int32: a parameter is a floating-point array",
    ),
    (
        "torchscript.pt",
        lambda p: torch.jit.save(torch.jit.script(_sequential()), str(p)),
        "a TorchScript archive (torch.jit.save), not a state_dict: save the model's state_dict "
        "alone, torch.save(model.state_dict(), FILE)",
    ),
    (
        "object.npz",
        lambda p: _savez(p, **{"net.1.weight": np.array([{"a": 1}], dtype=object)}),
        "array 'net.1.weight' holds Python objects (an object array), which are refused: only "
        "numeric arrays are read, never pickled data",
    ),
    (
        "whole_model.pt",
        lambda p: torch.save(_sequential(), p),
        "refused by torch.load(weights_only=True): Unsupported global: GLOBAL "
        "torch.nn.modules.container.Sequential was not an allowed global by default. It holds "
        "Python objects besides tensors",
    ),
    (
        "checkpoint.pt",
        lambda p: torch.save({"model": _state(_sequential()), "epoch": 3}, p),
        "not a state_dict of the task's model: 'model' is not a tensor but dict (a checkpoint? "
        "save its model's state_dict alone)",
    ),
    (
        "tensor.pt",
        lambda p: torch.save(torch.zeros(3), p),
        "not a state_dict of the task's model: it holds a Tensor, not a dict of tensors by name",
    ),
]


@pytest.mark.parametrize(("name", "write", "said"), _REFUSED, ids=[r[0] for r in _REFUSED])
def test_a_file_that_does_not_fit_is_one_line_and_sends_nothing(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, write: Any, said: str
) -> None:
    # Prepare
    path = tmp_path / name
    write(path)
    before = _tasks(url)
    # Execute
    code = main(_create(url, "--model", "mlp", "--initial", str(path)))
    # Assert: one line naming the file and what does not fit, after the note on how its names
    # were read where they were read with a prefix (helper-342: the docs show it so, and the
    # note was printed only for a file taken); no task was created
    lines = capsys.readouterr().err.splitlines()
    assert code == 1
    assert lines[-1].startswith(f"{PROG}: error: --initial {path}: {said}"), lines
    notes = [f"{PROG}: note: --initial {path}: its tensor names lack the task's leading 'net.'"]
    assert [line[: len(notes[0])] for line in lines[:-1]] == (
        notes if name == "shape_bare.npz" else []
    )
    assert "Traceback" not in "".join(lines)
    assert _tasks(url) == before


def test_a_pickle_bearing_pt_is_refused_without_running_it(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a state_dict plus an object whose unpickling would create a folder
    path, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    _evil_pickle(path, marker)
    before = _tasks(url)
    # Execute
    code = main(_create(url, "--model", "mlp", "--initial", str(path)))
    # Assert: refused by weights_only, the object's code never ran, nothing sent, and no
    # advice to load it without weights_only
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(
        f"{PROG}: error: --initial {path}: refused by torch.load(weights_only=True): "
        "Trying to load unsupported GLOBAL posix.mkdir whose module posix is blocked. It holds "
        "Python objects besides tensors"
    ), err
    assert "Plume never loads a full pickle" in err and "weights_only=False" not in err
    assert err.count("\n") == 1
    assert not marker.exists()
    assert _tasks(url) == before


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "--initial {path}: no such file"),
        (b"not a state_dict", "cannot read --initial {path}: "),
        # s47 docs review: torch.load's bare KeyError ("101") and EOFError were the line
        (
            b"hello",
            "cannot read --initial {path}: not a file torch.load(weights_only=True) "
            "reads (KeyError 101)",
        ),
        (
            b"",
            "cannot read --initial {path}: not a file torch.load(weights_only=True) reads "
            "(empty or cut short)",
        ),
    ],
)
def test_a_missing_or_unreadable_file_is_one_line(
    url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes | None,
    said: str,
) -> None:
    path = tmp_path / "w.pt"
    if content is not None:
        path.write_bytes(content)
    before = _tasks(url)
    code = main(_create(url, "--model", "mlp", "--initial", str(path)))
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"{PROG}: error: " + said.format(path=path)), err
    assert err.count("\n") == 1
    assert _tasks(url) == before


def test_a_flag_mistake_is_still_found_first(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A bad flag value is a usage mistake (status 2) whatever --initial holds.
    code = main(_create(url, "--model", "mlp", "--topk", "2", "--initial", str(tmp_path / "x")))
    assert code == 2
    assert "--topk must be in (0, 1]" in capsys.readouterr().err


def test_create_task_help_shows_initial_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["coordinator", "create-task", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--initial FILE" in out
    assert "plume coordinator create-task --model mlp --initial pretrained.pt" in out
    assert "weights_only=True" in out
