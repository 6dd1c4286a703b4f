"""The README's settings, machines and dates are the ones its result files record (s55b).

tests/test_s45_readme_figures.py checks the README's measured figures against their result
files. What it left unchecked: the settings a figure was measured at (the headline's model size,
devices, epochs...), the commands the README gives for its kept runs (each must parse to the
config the run recorded), the machine and date the "Provenance of the figures" section gives
each run and each row of the targets table, the 10^6 row's run (rounds, devices, where the
RSS goes flat), the worst backdoor seed's loss and the attacker fractions it says the weak-DP
defence meets. Each check here reads the file and looks for what the README says of it.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import shlex
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"


def _json(name: str) -> Any:
    return json.loads((RESULTS / name).read_text())


def _section(heading: str) -> str:
    """README's section under `heading` (up to the next heading of its level or above), with
    every run of whitespace made one space."""
    lines = README.read_text().splitlines()
    level = len(heading) - len(heading.lstrip("#"))
    (start,) = [i for i, line in enumerate(lines) if line == heading]
    end = next(
        (
            i
            for i in range(start + 1, len(lines))
            if lines[i].startswith("#") and len(lines[i]) - len(lines[i].lstrip("#")) <= level
        ),
        len(lines),
    )
    return " ".join(" ".join(lines[start:end]).split())


def _row(start: str) -> str:
    """The README table row that starts with `start`."""
    (row,) = [line for line in README.read_text().splitlines() if line.startswith(start)]
    return row


def _day(doc: dict[str, Any]) -> str:
    return str(doc.get("date") or doc.get("finished_at"))[:10]


# ---------------------------------------------------------------------------------------------
# The headline run's settings, machine and time
# ---------------------------------------------------------------------------------------------


def test_the_headline_settings_are_the_runs_config() -> None:
    # Prepare
    from mobile_sim.data import load_mnist
    from mobile_sim.models import build_model

    cfg = _json("bandwidth_accuracy.json")["config"]
    params = sum(p.numel() for p in build_model(cfg["model"]).parameters())
    train = inspect.signature(load_mnist).parameters["train_size"].default
    assert cfg["dataset"] == "mnist" and cfg["partition"] == "dirichlet"
    # Execute
    text = _section("## Headline result")
    # Assert
    assert (
        f"MNIST CNN ({params:,} parameters), {cfg['clients']} devices, "
        f"Dirichlet({cfg['alpha']}) label skew, {cfg['per_round']} devices a round, "
        f"E={cfg['local_epochs']}, B={cfg['batch_size']}, SGD lr {cfg['lr']}, "
        f"{cfg['rounds']} rounds, seed {cfg['seed']}"
    ) in text
    assert cfg["momentum"] == 0.0  # plain SGD
    assert (
        f"the 10,000-image t10k file: {train:,} training images spread over the devices, "
        f"{10_000 - train:,} test images"
    ) in text
    assert f"server step {cfg['server_lr']}" in _row("| Plume: top-k 0.5%")
    assert f"top-k {cfg['topk'] * 100:g}%, {cfg['bits']}-bit" in _row("| Plume: top-k 0.5%")


def test_the_headline_runs_machine_and_time() -> None:
    # "Both arms ... ran on a 2-core AMD EPYC, 2026-11-28, 17:51–17:55 UTC": the file's date is
    # when it was written, its wall_s how long both arms (and the same-step control) took.
    doc = _json("bandwidth_accuracy.json")
    end = datetime.fromisoformat(doc["date"].replace("Z", "+00:00"))
    start = end - timedelta(seconds=doc["wall_s"])
    cpu = doc["machine"]["cpu"]
    assert (
        f"ran on a {doc['machine']['cores']}-core {cpu}, {end:%Y-%m-%d}, "
        f"{start:%H:%M}–{end:%H:%M} UTC"
    ) in _section("### The headline run")


def test_the_headline_noise_is_the_test_sets() -> None:
    # "one test image is 0.05 points", "one standard error at 96% is about 0.4 points"
    from mobile_sim.data import load_mnist

    test = 10_000 - inspect.signature(load_mnist).parameters["train_size"].default
    acc = _json("bandwidth_accuracy.json")["dense_final_accuracy"]
    text = _section("### The headline run")
    assert f"one test image is {100 / test:.2f} points" in text
    se = 100 * math.sqrt(acc * (1 - acc) / test)
    assert f"one standard error at {acc * 100:.0f}% is about {se:.1f} points" in text


# ---------------------------------------------------------------------------------------------
# The kept runs: the command the README gives parses to the config the run recorded
# ---------------------------------------------------------------------------------------------


def _expected_config(command: str, over_http: bool) -> dict[str, Any]:
    """The config `plume sim` records for `command`: the parsed options' SimConfig; over HTTP
    with the task's downlink and selection timeout (mobile_sim.http_fleet._as_ran)."""
    from coordinator.cli import build_parser
    from mobile_sim import _cli as sim_cli

    args = build_parser().parse_args(shlex.split(command)[1:])
    values = dataclasses.asdict(sim_cli.config_from_args(args))
    if over_http:
        from mobile_sim.http_fleet import DOWNLINK, HttpFleetOptions

        values["selection_timeout_s"] = HttpFleetOptions.selection_timeout_s
        values["downlink_topk"], values["downlink_bits"] = DOWNLINK.topk, DOWNLINK.bits
    return values


def _assert_same_config(recorded: dict[str, Any], expected: dict[str, Any]) -> None:
    """Every recorded field as expected; a field the config gained after the run (absent from
    the record) at today's default."""
    from mobile_sim.runner import SimConfig

    defaults = {f.name: f.default for f in dataclasses.fields(SimConfig)}
    for key, value in expected.items():
        want = recorded[key] if key in recorded else defaults[key]
        if isinstance(value, tuple):
            value = list(value)
            want = list(want)
        assert value == want, f"{key}: the README's command gives {value!r}, the run had {want!r}"
    assert set(recorded) <= set(expected), set(recorded) - set(expected)


def _readme_command(prefix: str, heading: str) -> str:
    """The one `plume sim ...` command in backticks in the README's section `heading` that
    starts with `prefix`."""
    text = _section(heading)
    found = [part for part in text.split("`")[1::2] if part.startswith(prefix)]
    assert len(found) == 1, (prefix, found)
    return found[0]


def test_the_in_process_download_runs_command_is_its_config() -> None:
    command = _readme_command(
        "plume sim --dataset mnist --model mnist_cnn --rounds 1", "### The headline run"
    )
    assert command.endswith("--out bench/results/readme_cnn_download")
    doc = _json("readme_cnn_download/rounds.json")
    _assert_same_config(doc["config"], _expected_config(command, over_http=False))


def test_the_http_mlp_runs_command_is_its_config() -> None:
    command = _readme_command("plume sim --transport http --model mlp", "### The headline run")
    assert command.endswith("--out bench/results/readme_http_mlp")
    doc = _json("readme_http_mlp/rounds.json")
    _assert_same_config(doc["config"], _expected_config(command, over_http=True))
    cfg = doc["config"]
    assert (
        f"{cfg['rounds']} rounds, {cfg['per_round']} of {cfg['clients']} devices a round, "
        f"`--fleet {cfg['fleet']}`"
    ) in _section("### The headline run")


def test_the_demo_run_is_make_demos_line() -> None:
    # "the Makefile's line with that --out": make demo's `plume sim` line, --out changed
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    recipe = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    (line,) = [x.strip() for x in recipe.splitlines() if " sim " in x]
    words = shlex.split(line)
    words = ["plume", *words[words.index("sim") :]]
    words[words.index("--out") + 1] = "bench/results/demo_http_mlp"
    doc = _json("demo_http_mlp/rounds.json")
    assert doc["argv"][1:] == words[1:]
    _assert_same_config(doc["config"], _expected_config(shlex.join(words), over_http=True))
    cfg = doc["config"]
    assert (
        f"{cfg['clients']} devices, {cfg['per_round']} a round, {cfg['rounds']} rounds, "
        f"top-k {cfg['topk'] * 100:g}% at {cfg['bits']} bits, two local epochs"
    ) in _section("### The demo run")
    assert cfg["local_epochs"] == 2
    assert f"`make demo` has {cfg['clients']} simulated phones" in _section("# Plume")


# ---------------------------------------------------------------------------------------------
# Machines and dates
# ---------------------------------------------------------------------------------------------

# The targets table's rows and the files they quote, measured on the default machine and day
# the provenance list gives ("Each row was measured on a 2-core AMD EPYC VM on 2026-11-28
# unless it or this list says otherwise").
DEFAULT_DAY_FILES = [
    "coordinator_ingest.json",
    "secagg.json",
    "secagg_seed0_budget.json",
    "secagg_seed1_budget.json",
    "secagg_seed2_budget.json",
    "robustness_cnn_v3.json",
    "robustness_cnn_seed1_v3.json",
    "robustness_cnn_seed2_v3.json",
    "robustness.json",
    "robustness_backdoor_cnn.json",
    "robustness_backdoor_fraction_002_10seeds.json",
    "robustness_backdoor_fraction_005.json",
    "onnx_train.json",
]


def _default_machine() -> tuple[str, str, str]:
    """(CPU, day, kernel build) of the bullet "Each row was measured on a 2-core CPU VM on DAY
    ... the files of DAY say KERNEL"."""
    text = _section("### The targets table")
    head = text.split("Each row was measured on a 2-core ", 1)[1]
    cpu, rest = head.split(" VM on ", 1)
    day = rest.split(" ", 1)[0]
    kernel = text.split(f"the files of {day} say ", 1)[1].split(";", 1)[0]
    return cpu, day, kernel


@pytest.mark.parametrize("name", DEFAULT_DAY_FILES)
def test_a_targets_row_without_its_own_date_is_the_default_machine_and_day(name: str) -> None:
    cpu, day, kernel = _default_machine()
    doc = _json(name)
    assert (doc["machine"]["cpu"], doc["machine"]["cores"], _day(doc)) == (cpu, 2, day), name
    assert kernel in doc["machine"]["platform"], name


def test_the_digits_section_is_the_default_machine_and_day() -> None:
    cpu, day, kernel = _default_machine()
    sec = _json("sim_throughput.json")["sections"]["digits"]
    assert (sec["machine"]["cpu"], sec["date"]) == (cpu, day)
    assert kernel in sec["machine"]["platform"]


def test_the_rows_with_their_own_date_say_it() -> None:
    text = _section("### The targets table")
    sim = _json("sim_throughput.json")["sections"]
    mnist = sim["mnist"]
    kernel = mnist["machine"]["platform"].split("fc-", 1)[1].split("-", 1)[0]
    assert (
        f"the simulator's MNIST CNN row is from {mnist['date']}, when the platform string the "
        f"results record had changed (kernel build fc-{kernel};"
    ) in text
    codec = _json("codec.json")
    assert codec["machine"]["cpu"].startswith("Intel(R) Xeon(R)")
    assert codec["machine"]["torch_cpu_capability"] == "AVX512"
    assert (
        f"the codec row is from a {codec['machine']['cores']}-vCPU Intel Xeon VM (AVX-512) on "
        f"{_day(codec)}"
    ) in text
    million = sim["million"]
    assert million["machine"]["cpu"] == codec["machine"]["cpu"] and million["date"] == _day(codec)
    assert "and the 10^6 row from the same VM that day" in text


@pytest.mark.parametrize(
    ("name", "heading", "says"),
    [
        (
            "readme_cnn_download/rounds.json",
            "### The headline run",
            "{cores}-vCPU Intel Xeon, {day}; its `rounds.json` is committed there",
        ),
        (
            "readme_http_mlp/rounds.json",
            "### The headline run",
            "`--fleet off`; {cores}-vCPU Intel Xeon, {day} ",
        ),
        ("demo_http_mlp/rounds.json", "### The demo run", "On the {cores}-vCPU Intel Xeon VM"),
        (
            "robustness_backdoor_exactclip_seed0.json",
            "### The targets table",
            "robustness_backdoor_exactclip_seed0.json), {day})",
        ),
    ],
)
def test_a_kept_runs_machine_and_day_are_its_files(name: str, heading: str, says: str) -> None:
    doc = _json(name)
    text = _section(heading)
    want = says.format(cores=doc["machine"]["cores"], day=_day(doc))
    if "Intel Xeon" in want:
        assert doc["machine"]["cpu"].startswith("Intel(R) Xeon(R)"), name
    else:
        assert doc["machine"]["cpu"] == _default_machine()[0], name
    assert want in text, (name, want)


# ---------------------------------------------------------------------------------------------
# The 10^6 row
# ---------------------------------------------------------------------------------------------


def test_the_million_row_is_its_section() -> None:
    sec = _json("sim_throughput.json")["sections"]["million"]
    row = _row("| 10^6 registered devices |")
    rss = [p["rss_gb"] for p in sec["phases"]]
    spilled = [p["residuals_on_disk"] for p in sec["phases"]]
    first_spill = next(i for i, n in enumerate(spilled) if n > 0)  # 0-based: round i + 1 spills
    flat_from = first_spill  # the last round before the first spill: round first_spill
    assert (
        f"over {sec['rounds']} rounds of {sec['per_round']:,} devices with the digits MLP, flat "
        f"from round {flat_from} once trained devices' residuals fill the "
        f"{sec['residual_memory_mb']:.0f} MiB default budget and spill to `$TMPDIR`"
    ) in row
    assert len(rss) == sec["rounds"] == 100
    # flat: from that round on the RSS stays within 0.1 GB, and the resident residuals stop
    # growing at the budget (MiB, shown in MB), where they grew every round before
    assert max(rss[flat_from - 1 :]) - min(rss[flat_from - 1 :]) < 0.1
    resident = [p["residuals_resident_mb"] for p in sec["phases"]]
    budget_mb = sec["residual_memory_mb"] * 2**20 / 1e6
    assert all(a < b for a, b in zip(resident[:flat_from], resident[1:flat_from], strict=False))
    assert {round(r, 1) for r in resident[flat_from:]} == {round(budget_mb, 1)}
    assert sec["rss_unit"].startswith("GB (10^9")
    text = _section("### The targets table")
    assert (
        f"Measured by `{sec['command']}`, Intel Xeon {sec['machine']['cores']} vCPUs, "
        f"{sec['date']};"
    ) in text


# ---------------------------------------------------------------------------------------------
# Backdoor rows
# ---------------------------------------------------------------------------------------------

DP_Z001 = "dp:clip=1,quantile=0.9,z=0.01,seed=0+fedavg"


def _meets_every_seed(name: str) -> bool:
    by = _json(name)["backdoor_by_defense"][DP_Z001]
    return all(
        b <= 0.1 + 1e-6 and pp <= 1.0 + 1e-6
        for b, pp in zip(
            by["worst_backdoor_accuracy_per_seed"],
            by["worst_main_task_loss_pp_per_seed"],
            strict=True,
        )
    )


def test_the_worst_loss_seed_is_the_files() -> None:
    doc = _json("robustness.json")
    loss = doc["main_task_loss_pp_per_seed"]
    worst = max(loss)
    assert worst == doc["main_task_loss_pp_max_over_seeds"]
    assert f"+{worst:.2f} pp (seed {loss.index(worst)})" in _row("| backdoor defence")


def test_the_weak_dp_defence_meets_the_fractions_the_row_says() -> None:
    # "met at 1-2% attackers, missed from 5%"
    row = _row("| the same (z = 0.01) with 2% attackers")
    assert "met at 1-2% attackers, missed from 5%" in row
    assert _meets_every_seed("robustness_backdoor_fraction_001.json")
    assert _meets_every_seed("robustness_backdoor_fraction_002_10seeds.json")
    assert _json("robustness_backdoor_fraction_001.json")["backdoor_malicious"] == 0.01
    assert not _meets_every_seed("robustness_backdoor_fraction_005.json")


def test_the_rows_say_the_model_attackers_seeds_and_batch_their_runs_had() -> None:
    mlp = _json("robustness.json")
    assert mlp["model"] == "mlp" and mlp["backdoor_malicious"] == 0.1
    assert (
        f"MLP, {mlp['backdoor_malicious']:.0%} attackers, "
        f"{len(mlp['backdoor_seeds_complete'])} seeds merged"
    ) in _row("| backdoor defence")
    assert f", {mlp['backdoor_malicious']:.0%} attackers |" in _row(
        "| backdoor, norm bounding + DP without the screen"
    )
    cnn = _json("robustness_backdoor_cnn.json")
    seeds = cnn["backdoor_seeds_complete"]
    assert cnn["model"] == "mnist_cnn" and seeds == list(range(len(seeds)))
    assert (
        f"on the MNIST CNN ({cnn['backdoor_malicious']:.0%} attackers, seeds 0-{seeds[-1]})"
    ) in _row("| screen + norm bounding, and screen")
    two = _json("robustness_backdoor_fraction_002_10seeds.json")
    assert (two["model"], two["backdoor_malicious"]) == ("mlp", 0.02)
    assert _json("robustness_backdoor_fraction_005.json")["backdoor_malicious"] == 0.05
    # ONNX: the headline ratio is the MNIST CNN's at B=10, the worse one at B=32
    steps = _json("onnx_train.json")["models"]["mnist_cnn"]["step_time"]
    row = _row("| ONNX training step vs torch")
    assert "(MNIST CNN, B=10)" in row
    assert (
        f"| {steps['B=10']['ort_over_torch']:.2f}x ({steps['B=32']['ort_over_torch']:.2f}x at B=32)"
    ) in row
    # SecAgg+ accuracy: 20 rounds
    rounds = _json("secagg.json")["settings"]["rounds"]
    assert f"| SecAgg+ accuracy, {rounds} rounds, same cohorts |" in _row("| SecAgg+ accuracy")
