"""`plume coordinator create-task --initial FILE` reads a file whose tensor names differ from
the task's by one leading prefix replaced with another (`module.1.weight` for the zoo MLP's
`net.1.weight`: the README's nn.Sequential saved from inside nn.DataParallel), with a note.
Before, only a prefix added or one removed was tried, and such a file was refused: "it has no
tensor 'net.1.weight'". A file two readings fit with different pairings is refused, naming
both, rather than read one way at random."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from coordinator._cli import _match_names
from coordinator.cli import main
from coordinator.service import AdminClient, ServerThread, ServiceConfig

ADMIN = "h295-token"
PROG = "plume coordinator create-task"
MLP = ["net.1.weight", "net.1.bias", "net.3.weight", "net.3.bias", "net.5.weight", "net.5.bias"]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("h295_server")
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as served:
        yield served


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLUME_DEBUG", raising=False)


def _sequential() -> nn.Module:
    """The zoo MLP's layers in a bare nn.Sequential (README's SDK example): `1.weight`, ..."""
    torch.manual_seed(295)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(),
                         nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))  # fmt: skip


def _create(url: str, *flags: str) -> list[str]:
    return ["coordinator", "create-task", "--url", url, "--admin-token", ADMIN, *flags]


@pytest.mark.parametrize("prefix", ["module.", "model.backbone."])
def test_a_file_whose_prefix_replaces_the_task_s_is_read_with_a_note(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], prefix: str
) -> None:
    # Prepare: the nn.Sequential's state_dict under another prefix than the zoo MLP's 'net.'
    model = _sequential()
    path = tmp_path / "wrapped.pt"
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, path)
    # Execute
    code = main(_create(url, "--model", "mlp", "--initial", str(path)))
    out, err = capsys.readouterr()
    # Assert: the task holds exactly those weights, and the renaming is said
    assert code == 0, err
    assert err == (
        f"{PROG}: note: --initial {path}: its tensor names have a leading {prefix!r} where the "
        f"task's have 'net.' ('{prefix}1.weight' for 'net.1.weight'); read them with it "
        "replaced\n"
    )
    with AdminClient(url, ADMIN) as admin:
        exported = admin.model(int(json.loads(out)["task_id"]))
    assert [e.name for e in exported.spec.entries] == MLP
    want = np.concatenate([p.detach().numpy().reshape(-1) for p in model.parameters()])
    assert np.array_equal(exported.params, want)


def test_a_replaced_prefix_still_names_a_missing_tensor(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = {"module." + k: v for k, v in _sequential().state_dict().items() if k != "5.bias"}
    path = tmp_path / "missing.pt"
    torch.save(state, path)
    code = main(_create(url, "--model", "mlp", "--initial", str(path)))
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(
        f"{PROG}: error: --initial {path}: it has no tensor 'net.5.bias', a parameter of the "
        "task's model (reading its names with their leading 'module.' replaced by 'net.'); "
        "the task's are net.1.weight"
    ), err


def test_two_readings_that_fit_differently_are_refused_naming_both() -> None:
    # The task's parameters net.weight and net.bias, and buffers weight and bias; the file's
    # m.net.* are its parameters with 'm.' removed, and its m.* with 'm.' replaced by 'net.'
    # (the other two names then read as buffers, or as names the model has not: allowed).
    names = ["m.weight", "m.bias", "m.net.weight", "m.net.bias"]
    wanted = ["net.weight", "net.bias"]
    with pytest.raises(ValueError) as caught:
        _match_names(names, wanted, None)
    assert str(caught.value) == (
        "its tensor names fit the task's in 2 ways, without their leading 'm.' ('m.net.weight' "
        "as 'net.weight'); or with their leading 'm.' replaced by 'net.' ('m.weight' as "
        "'net.weight'): rename them to the task's, which are net.weight, net.bias"
    )
    # Only one fits once the other's extra names must be the model's buffers.
    buffers = frozenset({"weight", "bias"})
    assert _match_names(names, wanted, buffers)[0] == {
        "net.weight": "m.net.weight",
        "net.bias": "m.net.bias",
    }


@pytest.mark.parametrize(
    ("names", "wanted", "pairs", "note"),
    [
        # as they are: no note, even when another reading would fit too
        (["net.a", "a"], ["net.a"], {"net.a": "net.a"}, None),
        # one prefix added, one removed, one replaced, a longer one replaced
        (["a", "b"], ["net.a", "net.b"], {"net.a": "a", "net.b": "b"}, "lack the task's"),
        (["module.a", "module.b"], ["a", "b"], {"a": "module.a", "b": "module.b"}, "that the"),
        (["m.a", "m.b"], ["n.a", "n.b"], {"n.a": "m.a", "n.b": "m.b"}, "where the task's"),
        (["x.y.a", "x.y.b"], ["n.a", "n.b"], {"n.a": "x.y.a", "n.b": "x.y.b"}, "'x.y.' where"),
        # two readings pairing alike ('m.' removed; 'm.net.' replaced by 'net.') are one
        (
            ["m.net.a", "m.net.b"],
            ["net.a", "net.b"],
            {"net.a": "m.net.a", "net.b": "m.net.b"},
            "leading 'm.' that the task's lack",
        ),
    ],
)
def test_the_readings_and_their_notes(
    names: list[str], wanted: list[str], pairs: dict[str, str], note: str | None
) -> None:
    got, said = _match_names(names, wanted, None)
    assert got == pairs
    assert (said is None) if note is None else (said is not None and note in said)


def test_a_file_no_reading_fits_is_still_refused() -> None:
    # Names sharing no prefix with the task's, not one to one after any replacement
    with pytest.raises(ValueError, match="^it has no tensor 'net.a'"):
        _match_names(["m.a", "k.b"], ["net.a", "net.b"], frozenset())
    # Every parameter found, but a name left over that is not the model's
    with pytest.raises(ValueError, match="^tensor 'm.c' is not a parameter of the task's model"):
        _match_names(["m.a", "m.b", "m.c"], ["n.a", "n.b"], frozenset())
