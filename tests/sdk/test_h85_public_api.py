"""The SDK's public names, as an app developer meets them: importable from where the docs say,
documented, and fully typed (the package ships `py.typed`, so a missing hint is an `Any` in
the app's type checking).

Before: `from sdk import ClientError` failed (the error every coordinator refusal raises lived
only in `sdk.client`), and `Client.close`, `Client.device_id`, most `AsyncClient` methods,
`LocalTrainer.train`, `OrtTrainer.spec` and `UpdateEncoder`'s methods had no docstring.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest

# Module -> the classes an app uses directly (their public methods and properties are checked).
_CLASSES = {
    "sdk": ["Client", "AsyncClient", "LocalTrainer", "RoundReport", "SecureRoundReport"],
    "sdk.ort": ["OrtTrainer", "OrtDevice"],
    "sdk.trainer": ["TorchTrainer"],
    "sdk.device": ["UpdateEncoder"],
}


def _members() -> list[tuple[str, Any]]:
    """Each class's public methods and properties, its own and those it inherits from the
    SDK's classes (`Client` and `AsyncClient` share `sdk.client._ClientBase`'s), as attribute
    lookup finds them: the first definition along the MRO."""
    found: list[tuple[str, Any]] = []
    for module_name, classes in _CLASSES.items():
        module = importlib.import_module(module_name)
        for class_name in classes:
            cls = getattr(module, class_name)
            seen: set[str] = set()
            for owner in cls.__mro__:
                if not owner.__module__.startswith("sdk"):
                    continue  # object, typing.Protocol, ...
                for name, member in vars(owner).items():
                    if name in seen or (name.startswith("_") and name != "__init__"):
                        continue
                    seen.add(name)
                    fn = member.fget if isinstance(member, property) else member
                    if isinstance(fn, (staticmethod, classmethod)):
                        fn = fn.__func__
                    # A Protocol's generated __init__ is not the class's own
                    if inspect.isfunction(fn) and fn.__qualname__.startswith(f"{owner.__name__}."):
                        found.append((f"{module_name}.{class_name}.{name}", fn))
    return found


def test_client_errors_are_importable_from_sdk() -> None:
    import sdk
    from sdk import client

    for name in ("ClientError", "ModelIntegrityError"):
        assert name in sdk.__all__
        assert getattr(sdk, name) is getattr(client, name)


def test_every_name_in_sdk_all_resolves() -> None:
    import sdk

    for name in sdk.__all__:
        assert getattr(sdk, name) is not None


@pytest.mark.parametrize(
    ("name", "fn"), [m for m in _members() if m[0].split(".")[-1] != "__init__"]
)
def test_public_methods_have_docstrings(name: str, fn: Any) -> None:
    assert (fn.__doc__ or "").strip(), f"{name} has no docstring"


@pytest.mark.parametrize(("name", "fn"), _members())
def test_public_methods_are_fully_typed(name: str, fn: Any) -> None:
    sig = inspect.signature(fn)
    untyped = [
        p.name
        for p in sig.parameters.values()
        if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty
    ]
    assert not untyped, f"{name}: parameters without a type hint: {untyped}"
    assert sig.return_annotation is not inspect.Signature.empty, f"{name}: no return type"


def test_the_clients_document_their_constructor_arguments() -> None:
    from sdk import AsyncClient, Client

    for cls in (Client, AsyncClient):
        doc = inspect.getdoc(cls) or ""
        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        missing = [p for p in params if f"`{p}`" not in doc]
        assert not missing, f"{cls.__name__}'s docstring does not describe {missing}"
