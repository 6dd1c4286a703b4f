"""Character-level models for next-character prediction (LEAF's Shakespeare task).

The LSTM is written with plain linear layers and a loop over time steps instead of `nn.LSTM`,
so `torch.func.vmap` can train many clients' copies at once (the fused cuDNN/ATen LSTM kernel
has no batching rule). The maths is the standard LSTM (gates i, f, g, o as in `nn.LSTM`).
"""

from __future__ import annotations

import torch
from torch import nn

from mobile_sim.datasets.shakespeare import VOCAB

__all__ = ["CharLSTM", "LSTMLayer", "TEXT_MODELS"]


class LSTMLayer(nn.Module):
    """One LSTM layer over a whole sequence: float32[B, L, in] -> float32[B, L, hidden]."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.ih = nn.Linear(in_features, 4 * hidden)
        self.hh = nn.Linear(hidden, 4 * hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.ih(x)  # the input projection of every step in one matmul
        h = x.new_zeros(x.shape[0], self.hidden)
        c = x.new_zeros(x.shape[0], self.hidden)
        out = []
        for t in range(x.shape[1]):
            i, f, g, o = (pre[:, t] + self.hh(h)).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            out.append(h)
        return torch.stack(out, dim=1)


class CharLSTM(nn.Module):
    """Embedding -> stacked LSTM -> linear over the vocabulary, predicting the next character.

    Input: token ids float32 or int64 [B, L] (floats are cast; `mobile_sim.datasets` stores ids
    as float32). Output: logits float32[B, vocab_size] for the character after the sequence.
    LEAF's reference model has the shape of ``CharLSTM(embed_dim=8, hidden=256, layers=2)``,
    822,112 params at this vocabulary of 96 ids. LEAF's own, over its 80 characters, has 817,872
    (one bias per gate, as here), and its TensorFlow ``BasicLSTMCell`` adds a forget-gate bias of
    1.0 that `LSTMLayer` does not.
    """

    def __init__(
        self, vocab_size: int = len(VOCAB), embed_dim: int = 8, hidden: int = 256, layers: int = 2
    ) -> None:
        super().__init__()
        if min(vocab_size, embed_dim, hidden, layers) < 1:
            raise ValueError("vocab_size, embed_dim, hidden and layers must be >= 1")
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.layers = nn.ModuleList(
            LSTMLayer(embed_dim if k == 0 else hidden, hidden) for k in range(layers)
        )
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.long())
        for layer in self.layers:
            h = layer(h)
        logits: torch.Tensor = self.head(h[:, -1])
        return logits


# Names for the model zoo (mobile_sim.models.MODELS), registered there by the lead.
TEXT_MODELS = {
    "shakespeare_lstm": lambda: CharLSTM(len(VOCAB), 8, 256, 2),
    "shakespeare_lstm_small": lambda: CharLSTM(len(VOCAB), 8, 64, 1),
}
