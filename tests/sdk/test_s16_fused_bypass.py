"""What a module does when called must be its declared chain: a module whose call path is
replaced (not only its forward), or whose parameters share storage, trains through autograd."""

from __future__ import annotations

from typing import Any

from torch import nn

from mobile_sim.models import build_model
from sdk._fused import fused_chain


class ScaledCall(type(build_model("mlp"))):  # type: ignore[misc]
    """An MLP whose call multiplies the logits: forward unchanged, the call path not."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return 3 * super().__call__(*args, **kwargs)


def test_a_subclass_replacing_the_call_path_is_not_fused() -> None:
    # Prepare: the zoo MLP qualifies; a subclass changing __call__ must not
    plain = build_model("mlp")
    scaled = ScaledCall()
    scaled.load_state_dict(plain.state_dict())
    # Execute / Assert
    assert fused_chain(plain, onednn=False) is not None
    assert fused_chain(scaled, onednn=False) is None


def test_an_instance_call_impl_is_not_fused() -> None:
    # Prepare: nn.Module.__call__ runs self._call_impl; one set on the instance replaces it
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    assert fused_chain(model, onednn=False) is not None
    model._call_impl = lambda *a, **k: 2 * nn.Module._call_impl(model, *a, **k)  # type: ignore[method-assign]
    # Execute / Assert
    assert fused_chain(model, onednn=False) is None
    layer = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    layer[1]._call_impl = lambda *a, **k: nn.Module._call_impl(layer[1], *a, **k)  # type: ignore[method-assign]
    assert fused_chain(layer, onednn=False) is None


def test_parameters_sharing_storage_are_not_fused() -> None:
    # Prepare: two layers whose weights are distinct Parameters over one storage (the step
    # updates each layer in place as soon as its gradient is known; autograd computes all
    # gradients first)
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = nn.Parameter(a.weight.data)
    model = nn.Sequential(a, nn.ReLU(), b)
    assert a.weight is not b.weight
    assert a.weight.untyped_storage().data_ptr() == b.weight.untyped_storage().data_ptr()
    # Execute / Assert
    assert fused_chain(model, onednn=False) is None
    assert fused_chain(nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3)), onednn=False)
