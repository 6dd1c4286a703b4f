"""How many attackers each of seed 0's 20 cohorts held in the robustness matrix's setting.

docs/robustness.md (the support rule's Limits, and the median prototype's note) reads the
runner's `malicious_reports` measurement for seed 0: 100 devices, 10 per round, 20 rounds,
20% malicious, every selected device reporting (no simulated fleet). Which devices attack is
drawn from rng [seed, 2] and each cohort from rng [seed, round], so the counts depend on the
seed, the device counts and the malicious fraction, not on the data, model or attack: this
runs the runner itself on digits with one local epoch (about 10 s) instead of the MNIST MLP.

Run `python -m tests.mobile_sim.test_s24i_attackers_per_round` to print them.
"""

from __future__ import annotations

from mobile_sim.runner import SimConfig, run_simulation

# The doc's list, and how many rounds exceed t = 2 (trimmed mean 0.2 of 10) and F = 3.
SEED0 = [1, 1, 4, 1, 1, 4, 4, 4, 3, 1, 2, 4, 2, 3, 2, 3, 4, 1, 3, 3]


def attackers_per_round(seed: int = 0) -> list[int]:
    cfg = SimConfig(
        dataset="digits",
        clients=100,
        per_round=10,
        rounds=20,
        local_epochs=1,
        attack="signflip",
        malicious=0.2,
        eval_every=20,
        seed=seed,
    )
    result = run_simulation(cfg, progress=False)
    return [int(rec.measurements["attack"]["malicious_reports"]) for rec in result.records]


def test_seed_0_cohorts_hold_the_documented_attacker_counts() -> None:
    counts = attackers_per_round(0)
    assert counts == SEED0
    assert sum(c > 2 for c in counts) == 11  # t = 2 exceeded in 11 rounds
    assert sum(c > 3 for c in counts) == 6  # F = 3 exceeded in 6


if __name__ == "__main__":
    counts = attackers_per_round(0)
    print("attackers per round, seed 0:", ", ".join(map(str, counts)))
    print(
        f"rounds with more than 2: {sum(c > 2 for c in counts)}, more than 3: "
        f"{sum(c > 3 for c in counts)}"
    )
