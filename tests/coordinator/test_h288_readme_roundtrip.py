"""README's SDK example, round trip (helper-278's item 7): the model a team defines in its app
(README's bare nn.Sequential, keys `1.weight`) is the zoo MLP's layers, whose state_dict keys
are `net.1.weight`. Before, `get-model --format pt` output did not load into it (`Unexpected
key(s) ... "net.1.weight"`) and create-task could not start from its weights; now
`create-task --initial` reads them (with the `net.` added, said in a note) and `get-model
--strip-prefix net.` writes keys it loads."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from coordinator.cli import main
from coordinator.service import AdminClient, ServerThread, ServiceConfig
from mobile_sim.models import build_model
from sdk.flat import get_flat_params

ADMIN = "h288-readme"
README = Path(__file__).parents[2] / "README.md"


def _readme_block() -> str:
    """README's SDK-in-ten-lines block."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    found = [b for b in blocks if "from sdk import Client" in b]
    assert len(found) == 1
    return str(found[0])


def _readme_model() -> torch.nn.Module:
    """A fresh copy of the model README's block defines (its imports and `model = ...`)."""
    lines = _readme_block().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("model = "))
    code = ""
    for end in range(start, len(lines)):  # the statement's lines, up to where it parses
        code = "from torch import nn\n" + "\n".join(lines[start : end + 1])
        try:
            compile(code, "README.md", "exec")
            break
        except SyntaxError:
            continue
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    model: torch.nn.Module = namespace["model"]
    return model


@pytest.fixture()
def url(tmp_path: Path) -> Iterator[str]:
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as served:
        yield served


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLUME_DEBUG", raising=False)


def _run(url: str, command: str, *flags: str) -> int:
    return main(["coordinator", command, "--url", url, "--admin-token", ADMIN, *flags])


def test_readme_model_pretrained_trained_and_exported_loads_back(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the team's "pre-trained" README model, saved as its state_dict
    torch.set_num_threads(1)
    torch.manual_seed(288)
    pretrained = _readme_model()
    assert next(iter(pretrained.state_dict())) == "1.weight"
    torch.save(pretrained.state_dict(), tmp_path / "pretrained.pt")
    # Execute 1: README's create-task, started from those weights
    code = _run(url, "create-task", "--model", "mlp", "--rounds", "1", "--clients-per-round",
                "1", "--selection-timeout", "1", "--initial", str(tmp_path / "pretrained.pt"))  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    task_id = json.loads(out)["task_id"]
    assert "lack the task's leading 'net.'" in err
    with AdminClient(url, ADMIN) as admin:
        assert np.array_equal(admin.model(task_id).params, get_flat_params(pretrained))

    # Execute 2: README's SDK block, as written (its URL the loopback one), trains one round
    cwd = os.getcwd()
    os.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    try:
        code_text = _readme_block().replace("http://127.0.0.1:8080", url)
        exec(compile(code_text, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    capsys.readouterr()
    with AdminClient(url, ADMIN) as admin:
        deadline = time.monotonic() + 60
        while admin.status(task_id).version < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        exported = admin.model(task_id)
    assert exported.version == 1
    assert not np.array_equal(exported.params, get_flat_params(pretrained))

    # Execute 3: export for the README's model, and load it back into a fresh one
    assert _run(url, "get-model", "--task", str(task_id), "--out", str(tmp_path / "model.pt"),
                "--strip-prefix", "net.") == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["strip_prefix"] == "net."
    mine = _readme_model()
    mine.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=True)
    # Assert: the trained model, bit for bit
    assert np.array_equal(get_flat_params(mine), exported.params)

    # ... the default export stays the zoo model's state_dict (net.1.weight), which the
    # README's nn.Sequential refuses and build_model('mlp') loads
    assert _run(url, "get-model", "--task", str(task_id), "--out", str(tmp_path / "zoo.pt")) == 0
    zoo_state = torch.load(tmp_path / "zoo.pt", weights_only=True)
    assert next(iter(zoo_state)) == "net.1.weight"
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "net.1.weight"'):
        _readme_model().load_state_dict(zoo_state)
    zoo = build_model("mlp")
    zoo.load_state_dict(zoo_state, strict=True)
    assert np.array_equal(get_flat_params(zoo), exported.params)

    # ... and the stripped file starts another task with the same model (net. added back)
    capsys.readouterr()
    assert _run(url, "create-task", "--model", "mlp", "--initial", str(tmp_path / "model.pt")) == 0
    again = json.loads(capsys.readouterr().out)["task_id"]
    with AdminClient(url, ADMIN) as admin:
        assert admin.model(again).digest == exported.digest


def test_strip_prefix_on_npz_and_its_refusals(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: an mlp task and an mnist_cnn task (no common prefix)
    assert _run(url, "create-task", "--model", "mlp", "--seed", "4") == 0
    assert _run(url, "create-task", "--model", "mnist_cnn") == 0
    capsys.readouterr()
    model = build_model("mlp", seed=4)
    # Execute / Assert: npz names stripped too, same arrays
    out = tmp_path / "m.npz"
    assert _run(url, "get-model", "--task", "1", "--out", str(out), "--strip-prefix", "net.") == 0
    with np.load(out, allow_pickle=False) as z:
        assert z.files == ["1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias"]
        for name, tensor in model.state_dict().items():
            assert np.array_equal(z[name.removeprefix("net.")], tensor.numpy())
    capsys.readouterr()
    # ... a snapshot has no names: a usage mistake, before any request
    snap = tmp_path / "m.snap"
    with pytest.raises(SystemExit) as usage:
        _run(url, "get-model", "--task", "1", "--out", str(snap), "--strip-prefix", "net.")
    assert usage.value.code == 2
    assert "--strip-prefix renames the tensors of --format pt or npz" in capsys.readouterr().err
    # ... a prefix no name has: one line, nothing written
    pt = tmp_path / "cnn.pt"
    with pytest.raises(SystemExit) as refused:
        _run(url, "get-model", "--task", "2", "--out", str(pt), "--strip-prefix", "net.")
    err = capsys.readouterr().err
    assert refused.value.code == 1
    assert err == (
        "plume coordinator get-model: error: --strip-prefix 'net.': no tensor name of task 2's "
        "model (mnist_cnn) starts with it (its names: conv1.weight, conv1.bias, conv2.weight, "
        "conv2.bias, fc1.weight, fc1.bias, ... (8 in all)); nothing written\n"
    )
    assert not pt.exists() and not snap.exists()
    # ... an empty prefix is argparse's to refuse
    with pytest.raises(SystemExit) as empty:
        _run(url, "get-model", "--task", "1", "--out", str(pt), "--strip-prefix", "")
    assert empty.value.code == 2


def test_get_model_help_shows_strip_prefix_with_an_example(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["coordinator", "get-model", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--strip-prefix PREFIX" in out
    assert "plume coordinator get-model --task 1 --out model.pt --strip-prefix net." in out
