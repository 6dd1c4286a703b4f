"""Every public package's `__all__` names things that exist, and nothing public is missing."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = [
    "compression",
    "sdk",
    "coordinator.aggregators",
    "coordinator.engine",
    "mobile_sim.runner",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_honest(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"
    for member in exported:
        assert hasattr(module, member), f"{name}.__all__ names missing {member!r}"


def test_compression_public_names_are_exported() -> None:
    import compression

    public = {n for n in vars(compression) if not n.startswith("_")}
    # Submodule objects are not API; everything else public must be in __all__.
    public = {n for n in public if not isinstance(getattr(compression, n), type(compression))}
    public -= {"annotations"}
    assert public <= set(compression.__all__)
