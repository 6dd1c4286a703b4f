"""Tests for the vmap-friendly character LSTM."""

from __future__ import annotations

import pytest
import torch

from mobile_sim.models_text import TEXT_MODELS, CharLSTM


def test_char_lstm_matches_torch_lstm() -> None:
    # Prepare: copy our weights into nn.LSTM (whose second bias we zero, ours has one bias).
    torch.manual_seed(0)
    model = CharLSTM(96, 8, 16, 2)
    ref = torch.nn.LSTM(8, 16, 2, batch_first=True)
    with torch.no_grad():
        for k, layer in enumerate(model.layers):
            getattr(ref, f"weight_ih_l{k}").copy_(layer.ih.weight)
            getattr(ref, f"bias_ih_l{k}").copy_(layer.ih.bias)
            getattr(ref, f"weight_hh_l{k}").copy_(layer.hh.weight)
            getattr(ref, f"bias_hh_l{k}").zero_()
    x = torch.randint(0, 96, (4, 12)).float()

    # Execute
    emb = model.embed(x.long())
    ours = emb
    for layer in model.layers:
        ours = layer(ours)
    theirs, _ = ref(emb)

    # Assert
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    assert model(x).shape == (4, 96)


def test_char_lstm_runs_under_vmap_over_clients() -> None:
    # Prepare: three clients' copies of the parameters, each with its own batch.
    from torch.func import functional_call, stack_module_state, vmap

    models = [TEXT_MODELS["shakespeare_lstm_small"]() for _ in range(3)]
    params, buffers = stack_module_state(models)
    x = torch.randint(0, 96, (3, 5, 10)).float()

    # Execute
    out = vmap(lambda p, b, xb: functional_call(models[0], (p, b), (xb,)))(params, buffers, x)

    # Assert
    for k in range(3):
        torch.testing.assert_close(out[k], models[k](x[k]), atol=1e-5, rtol=1e-5)


def test_char_lstm_refuses_empty_sizes() -> None:
    with pytest.raises(ValueError, match="hidden"):
        CharLSTM(hidden=0)
