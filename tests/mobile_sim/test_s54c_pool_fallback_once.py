"""s54c: with `--backend pool --inner-backend vectorized` and a model vmap cannot batch, each
pool worker logged the fallback line ("... cannot be trained under vmap (...); training its
clients one by one instead") itself: the same line once per worker. The workers now report
the reason with their "ready" and the parent logs it once per run, as Ray's driver does."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mobile_sim import models
from mobile_sim.backends import TrainContext
from mobile_sim.backends._base import import_plugins
from mobile_sim.backends.process_pool import ProcessPoolBackend
from mobile_sim.data import load_digits_data

_PLUGIN = '''\
"""A model vmap cannot batch: it reads a tensor's value in Python (.item())."""
from torch import nn

from mobile_sim.models import MODELS


class ItemNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x) * (1.0 + 0.0 * float(x.sum().item()))


MODELS["s54c_item_net"] = ItemNet
'''


@pytest.fixture
def item_net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A plugin file registering "s54c_item_net" here and in each worker (which imports the
    context's plugins); afterwards neither the model nor the plugin's module is left behind."""
    path = tmp_path / "s54c_item_plugin.py"
    path.write_text(_PLUGIN)
    monkeypatch.setitem(models.MODELS, "s54c_item_net", lambda: None)  # removed at teardown
    before = set(sys.modules)
    import_plugins((str(path),))
    yield path
    for key in set(sys.modules) - before:
        if "s54c_item" in key:
            del sys.modules[key]


def _context(model: str, plugin: Path) -> TrainContext:
    data = load_digits_data()
    return TrainContext(
        model,
        data.x_train,
        data.y_train,
        epochs=1,
        batch_size=8,
        lr=0.1,
        plugins=(str(plugin),),
    )


@pytest.mark.timeout(300)
def test_two_workers_fall_back_with_one_line(
    item_net: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    # Prepare: two workers with the vectorized inner backend
    pool = ProcessPoolBackend(2, inner="vectorized", start_method="fork")

    # Execute
    with caplog.at_level(logging.WARNING, logger="mobile_sim.backends.vectorized"):
        try:
            pool.start(_context("s54c_item_net", item_net))
        finally:
            pool.close()

    # Assert: said once, by this process; no worker wrote it to the stderr it inherited
    lines = [r.getMessage() for r in caplog.records if "one by one" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("vectorized backend: model 's54c_item_net' cannot be trained ")
    assert ".item()" in lines[0]
    assert [line for line in capfd.readouterr().err.splitlines() if "one by one" in line] == []
