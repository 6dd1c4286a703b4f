"""s50 review, item 4: the README's secure example was `plume sim --secure --dataset mnist
--rounds 5`, the MNIST CNN, which takes minutes on 2 cores, while `plume sim --help` shows
`plume sim --secure --rounds 5 --model mlp`. No README figure comes from that CNN run, so the
README now shows the fast one, the command `--help` shows."""

from __future__ import annotations

import re
from pathlib import Path

from mobile_sim import _cli

ROOT = Path(__file__).resolve().parents[2]
FAST = "plume sim --secure --rounds 5 --model mlp"


def _secure_sim_lines(text: str) -> list[str]:
    return [
        line.split("#", 1)[0].strip()
        for line in text.splitlines()
        if re.match(r"\s*plume sim .*--secure\b", line)
    ]


def test_the_readme_secure_example_is_the_helps() -> None:
    # Prepare
    readme = (ROOT / "README.md").read_text()

    # Execute
    shown = _secure_sim_lines(readme)

    # Assert: the one secure `plume sim` line in the README is --help's, on the MLP
    assert shown == [FAST]
    assert FAST in _secure_sim_lines(_cli._EXAMPLES)
