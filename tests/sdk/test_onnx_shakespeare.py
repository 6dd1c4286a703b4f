"""Stretch: a small causal-attention character model (Shakespeare) trained on onnxruntime."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sdk.onnx_export import export_training_artifacts
from sdk.ort import OrtTrainer

VOCAB = 96  # mobile_sim.datasets.shakespeare.VOCAB: "\0" + printable ASCII
SEQ = 80
LR = 0.1


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t sees positions <= t: [B, T, D] -> [B, T, D]."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        # Built in forward rather than held as a buffer: the export refuses buffers.
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        att = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        out: torch.Tensor = self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return out


class Block(nn.Module):
    """Pre-norm transformer block: attention and a GELU MLP, each with a residual."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        out: torch.Tensor = x + self.mlp(self.ln2(x))
        return out


class CharAttention(nn.Module):
    """Token + position embeddings, causal transformer blocks, next-character logits [B, V].

    Input: token ids float32 or int64 [B, SEQ] (mobile_sim stores Shakespeare ids as float32).
    """

    def __init__(self, dim: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(SEQ, dim)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.long()
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        out: torch.Tensor = self.head(self.ln(self.blocks(h))[:, -1])
        return out


def _model() -> CharAttention:
    torch.manual_seed(0)
    return CharAttention()


@pytest.fixture(scope="module")
def shakespeare() -> tuple[np.ndarray, np.ndarray]:
    from mobile_sim.datasets import load_shakespeare

    try:
        data = load_shakespeare(max_clients=20)
    except Exception as exc:  # DataError when the text is not on this machine
        pytest.skip(f"Shakespeare not available: {exc}")
    return data.x_train, data.y_train


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("char_attention")
    export_training_artifacts(_model(), torch.randint(0, VOCAB, (4, SEQ)).float(), out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("steps", [1, 50])
def test_char_attention_matches_torch(
    artifacts: Path, shakespeare: tuple[np.ndarray, np.ndarray], steps: int
) -> None:
    # Prepare
    x_all, y_all = shakespeare
    trainer = OrtTrainer.from_dir(artifacts)
    model = _model()
    start = [p.detach().numpy().copy() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    rng = np.random.default_rng(steps)

    # Execute
    params = [p.copy() for p in start]
    for i in range(steps):
        idx = rng.choice(len(x_all), [7, 1, 5, 8][i % 4], replace=False)
        x, y = x_all[idx], y_all[idx]
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
        _, params, _ = trainer.step(params, [], x, y, LR)

    # Assert
    for got, p, s in zip(params, model.parameters(), start, strict=True):
        want = p.detach().numpy() - s
        assert np.linalg.norm(got - s - want) / np.linalg.norm(want) < 1e-4


@pytest.mark.slow
def test_char_attention_learns_on_onnxruntime(
    artifacts: Path, shakespeare: tuple[np.ndarray, np.ndarray]
) -> None:
    # Prepare
    x, y = shakespeare
    trainer = OrtTrainer.from_dir(artifacts)
    params = np.concatenate([p.detach().numpy().ravel() for p in _model().parameters()])
    held_x, held_y = x[-500:], y[-500:]
    _, loss_before = trainer.evaluate(params, held_x, held_y)

    # Execute: one epoch over 3,000 windows.
    result = trainer.train(
        params, x[:3000], y[:3000], epochs=1, batch_size=20, lr=0.5,
        rng=np.random.default_rng(0),
    )  # fmt: skip
    _, loss_after = trainer.evaluate(result.params, held_x, held_y)

    # Assert: from uniform guessing (ln 96 = 4.56) to well below it.
    assert loss_before > 4.0
    assert loss_after < loss_before - 0.8
