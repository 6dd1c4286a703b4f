"""The README's headline figures are the ones in the result files they come from (s45, s49).

`bench/summarize.py --check` keeps docs/benchmarks.md in step with bench/results/, but nothing
checked the figures the README quotes: a result file re-run in place (its command writes over
it) could leave the README quoting the old run. Each check below reads one figure from its
file, formats it as the README prints it, and looks for it on the README's line for that row.
A figure moved by a re-run fails here until the README is updated with it.

s49: the rest of the targets table (downlink, SecAgg+, the CNN robustness seeds, the backdoor
rows, the simulator rows) and the paragraphs about the runs (the demo, the downlink ratios, the
HTTP and in-process download runs) are checked too; a figure computed from a file's values (a
mean over seeds, a ratio of two sizes, a time with the start-up added) is computed here the same
way. The runs' provenance (machines, dates, re-runs, the download runs) moved from the top of the
README to its "Provenance of the figures" section: a figure quoted there is looked for in the
subsection that holds it (`### The demo run`, ...), one quoted in a table on its row.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def _get(path: str, key: str) -> Any:
    value: Any = json.loads((RESULTS / path).read_text())
    for part in key.split("."):
        value = value[part]
    return value


def _pct2(v: float) -> str:
    return f"{v * 100:.2f}%"


# (where the README quotes it: a text that starts its line, or a heading whose section holds it
# (see _where); result file; key (dots go into objects); how the README writes the value)
FIGURES: list[tuple[str, str, str, Callable[[Any], str]]] = [
    ("| dense fp32 FedAvg |", "bandwidth_accuracy.json", "dense.final_accuracy", _pct2),
    ("| Plume: top-k 0.5%", "bandwidth_accuracy.json", "compressed.final_accuracy", _pct2),
    (
        "| Plume: top-k 0.5%",
        "bandwidth_accuracy.json",
        "compressed.upload_bytes",
        lambda v: f"{v / 1e6:.2f} MB",
    ),
    (
        "| Plume: top-k 0.5%",
        "bandwidth_accuracy.json",
        "compressed.upload_ratio_vs_dense",
        lambda v: f"**{v:.0f}x fewer**",
    ),
    ("| codec, one MNIST-CNN update |", "codec.json", "encode_ms", lambda v: f"encode {v:.1f} ms"),
    ("| codec, one MNIST-CNN update |", "codec.json", "decode_ms", lambda v: f"decode {v:.2f} ms"),
    (
        "| coordinator ingest |",
        "coordinator_ingest.json",
        "inprocess_updates_per_s",
        lambda v: f"{v:,.0f}/s in-process",
    ),
    (
        "| coordinator ingest |",
        "coordinator_ingest.json",
        "http_updates_per_s",
        lambda v: f"{v:,.0f}/s over HTTP",
    ),
    (
        "| SecAgg+ at n=100",
        "secagg.json",
        "plain_frame_bytes",
        lambda v: f"{v:,.0f} bytes on average",
    ),
    (
        "| the same on the MLP (full matrix",
        "robustness.json",
        "worst_case_accuracy_fraction_20pct",
        lambda v: f"| {v:.3f} |",
    ),
    (
        "| backdoor defence",
        "robustness.json",
        "backdoor_accuracy",
        lambda v: f"{v * 100:.2f}% backdoor",
    ),
    (
        "| backdoor defence",
        "robustness.json",
        "main_task_loss_pp",
        lambda v: f"+{v:.2f} pp main-task",
    ),
    (
        "| backdoor defence",
        "robustness.json",
        "backdoor_accuracy_max_over_seeds",
        lambda v: f"worst seeds {v * 100:.1f}%",
    ),
    (
        "| backdoor defence",
        "robustness.json",
        "main_task_loss_pp_max_over_seeds",
        lambda v: f"+{v:.2f} pp (seed",
    ),
    (
        "| ONNX training step vs torch",
        "onnx_train.json",
        "ort_over_torch_step_time",
        lambda v: f"| {v:.2f}x (",
    ),
    (
        "| ONNX training step vs torch",
        "onnx_train.json",
        "worst_ort_over_torch_step_time",
        lambda v: f"({v:.2f}x at B=32)",
    ),
    (
        "| simulator, digits-many |",
        "sim_throughput.json",
        "digits_many_updates_per_s",
        lambda v: f"{v:,.0f} client updates/s",
    ),
    (
        "| simulator, MNIST CNN vs plain torch loop |",
        "sim_throughput.json",
        "mnist_cnn_ratios_by_backend.pool",
        lambda v: f"| {v:.2f}x wall time (pool;",
    ),
    (
        "| simulator, MNIST CNN vs plain torch loop |",
        "sim_throughput.json",
        "mnist_cnn_ratios_by_backend.sequential",
        lambda v: f"sequential {v:.2f}x",
    ),
    (
        "| 10^6 registered devices |",
        "sim_throughput.json",
        "million_devices_rss_gb",
        lambda v: f"| {v:.2f} GB peak RSS",
    ),
    (
        "### The demo run",
        "demo_http_mlp/rounds.json",
        "summary.final_accuracy",
        lambda v: f"{v:.4f}",
    ),
]


def _line(start: str) -> str:
    """The README line that starts with `start`, with the next one (a sentence may wrap)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    found = [i for i, line in enumerate(lines) if line.startswith(start)]
    assert len(found) == 1, f"README.md: {len(found)} lines start with {start!r}"
    return " ".join(lines[found[0] : found[0] + 2])


def _headings(lines: list[str]) -> list[tuple[int, int]]:
    """(line index, level) of the README's Markdown headings, fenced code left out."""
    out: list[tuple[int, int]] = []
    fenced = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            out.append((i, len(line) - len(line.lstrip("#"))))
    return out


def _section(heading: str) -> str:
    """The README's section under `heading` (a whole heading line, `### The demo run`), with every
    run of whitespace made one space: up to the next heading of its level or above (the title's,
    `# Plume`, up to the first `##`)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    heads = _headings(lines)
    found = [(i, level) for i, level in heads if lines[i] == heading]
    assert len(found) == 1, f"README.md: {len(found)} headings {heading!r}"
    start, level = found[0]
    ends = [i for i, lv in heads if i > start and lv <= max(level, 2)]
    return " ".join(" ".join(lines[start : ends[0] if ends else len(lines)]).split())


def _where(start: str | None) -> str:
    """Where a figure is looked for: the whole README's prose (None), a heading's section (a
    start that is a heading, `### ...`) or the README line that starts with `start`."""
    if start is None:
        return _prose()
    if start.startswith("#"):
        return _section(start)
    return _line(start)


@pytest.mark.parametrize(
    ("start", "path", "key", "fmt"), FIGURES, ids=[f"{p}:{k}" for _, p, k, _ in FIGURES]
)
def test_the_readme_quotes_the_result_file(
    start: str, path: str, key: str, fmt: Callable[[Any], str]
) -> None:
    # Execute
    want = fmt(_get(path, key))
    # Assert
    assert want in _where(start), f"README.md's {start!r} does not say {want!r} ({path}: {key})"


def _prose() -> str:
    """The whole README with every run of whitespace made one space (a sentence may wrap)."""
    return " ".join((ROOT / "README.md").read_text().split())


def _downlink(key: str) -> Any:
    return _get("coordinator_ingest.json", f"details.downlink.{key}")


def _lag_bytes(lag: int) -> int:
    return int(_downlink(f"by_lag.{lag}.bytes"))


def _served_ratios(snapshot_key: str) -> str:
    """'102x to 21x': a snapshot's bytes over the delta chain's, 1 and 5 versions behind."""
    snapshot = _downlink(snapshot_key)
    return f"{snapshot / _lag_bytes(1):.0f}x to {snapshot / _lag_bytes(5):.0f}x"


def _raw_ratios() -> str:
    ratios = _get("coordinator_ingest.json", "downlink_ratio_vs_dense")
    return f"{ratios[0]:.0f}x to {ratios[-1]:.0f}x"


def _defence(path: str, defence: str, key: str) -> Any:
    return _get(path, "backdoor_by_defense")[defence][key]


def _seeds_meeting(path: str, defence: str) -> int:
    """Seeds within both backdoor targets (10%, 1 pp; bench/robustness.py's tolerance)."""
    backdoor = _defence(path, defence, "worst_backdoor_accuracy_per_seed")
    loss = _defence(path, defence, "worst_main_task_loss_pp_per_seed")
    return sum(
        1 for b, pp in zip(backdoor, loss, strict=True) if b <= 0.1 + 1e-6 and pp <= 1.0 + 1e-6
    )


SCREEN_NORMBOUND = "collusion:tau=0.3+normbound:q=0.9,init=1+fedavg"
SCREEN_WEAK_DP = "collusion:tau=0.3+dp:clip=1,quantile=0.9,z=0.01,seed=0+fedavg"
DP_Z005 = "dp:clip=0.5,quantile=0.5,z=0.05,seed=0+fedavg"
DP_Z001 = "dp:clip=1,quantile=0.9,z=0.01,seed=0+fedavg"
ATTACK_NAMES = {"ipm:epsilon=100": "IPM ε=100", "alie": "ALIE"}


def _secagg_gaps() -> list[float]:
    return [_get(f"secagg_seed{s}_budget.json", "accuracy_gap_pp") for s in (0, 1, 2)]


def _secagg_ratios_by_n() -> str:
    ratios = [t["upload_ratio_vs_plain"] for t in _get("secagg.json", "timing").values()]
    ns = [int(n) for n in _get("secagg.json", "timing")]
    return f"({min(ratios):.2f}x-{max(ratios):.2f}x at n={min(ns)}..{max(ns)})"


def _cnn_worst() -> str:
    files = [
        "robustness_cnn_v3.json",
        "robustness_cnn_seed1_v3.json",
        "robustness_cnn_seed2_v3.json",
    ]
    fractions = ", ".join(f"{_get(f, 'worst_case_accuracy_fraction_20pct'):.3f}" for f in files)
    attacks = ", ".join(ATTACK_NAMES[_get(f, "worst_case_attack_20pct")] for f in files)
    return f"{fractions} of no-attack accuracy (worst: {attacks})"


def _digits(backend: str, key: str) -> Any:
    return _get("sim_throughput.json", f"sections.digits.results.{backend}.{key}")


def _digits_updates() -> int:
    settings = _get("sim_throughput.json", "sections.digits.settings")
    return int(settings["clients_per_round"] * settings["rounds"])


def _digits_counted(backend: str) -> float:
    """Updates a second with the backend's start-up (`startup_s`) added to its rounds' time."""
    seconds = float(_digits(backend, "wall_s")) + float(_digits(backend, "startup_s"))
    return _digits_updates() / seconds


def _mnist(backend: str) -> dict[str, Any]:
    result: dict[str, Any] = _get("sim_throughput.json", f"sections.mnist.results.{backend}")
    return result


def _mnist_setup_s(backend: str) -> float:
    """The run's time outside both loops' rounds: pool start-up, data loading, checkpoints."""
    r = _mnist(backend)
    return float(r["wall_s_with_setup_and_plain_loop"] - r["wall_s"] - r["plain_loop_wall_s"])


def _mnist_counted(backend: str) -> float:
    r = _mnist(backend)
    return float((r["wall_s"] + _mnist_setup_s(backend)) / r["plain_loop_wall_s"])


def _pool_ratio(path: str) -> float:
    return float(_get(path, "mnist_cnn_ratios_by_backend.pool"))


def _xeon_speeds() -> str:
    """How much faster the quiet Intel Xeon run's plain loop went than the first run's."""
    slow = _get("sim_throughput_xeon.json", "sections.mnist.results.plain_torch_loop.wall_s")
    fast = _get("sim_throughput_xeon_quiet.json", "sections.mnist.results.plain_torch_loop.wall_s")
    return f"speeds differed {slow / fast:.1f}x"


def _http_mlp(key: str) -> Any:
    return _get("readme_http_mlp/rounds.json", key)


def _http_rounds() -> list[dict[str, Any]]:
    rounds: list[dict[str, Any]] = _http_mlp("rounds")
    return rounds


def _http_control(key: str) -> int:
    return sum(int(r["measurements"]["control_traffic"][key]) for r in _http_rounds())


def _http_down_mb() -> str:
    """'7.3 MB in each of rounds 1 and 2 ... then 0.88 to 6.6 MB a round'."""
    down = [r["bytes_down"] for r in _http_rounds()]
    first = {f"{d / 1e6:.1f}" for d in down[:2]}
    assert len(first) == 1, down[:2]
    return (
        f"{first.pop()} MB in each of rounds 1 and 2, where each device's download was its "
        f"first, a snapshot, then {min(down[2:]) / 1e6:.2f} to {max(down[2:]) / 1e6:.1f} MB a round"
    )


def _http_snapshot_bytes() -> str:
    """Round 1's downloads, all snapshots, from the run's ledger.csv: one size, against raw."""
    import csv

    with (RESULTS / "readme_http_mlp" / "ledger.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["round_id"] == "1" and r["direction"] == "down"]
    sizes = {int(r["payload_bytes"]) for r in rows}
    dense = {int(r["dense_bytes"]) for r in rows}
    assert len(sizes) == 1 and len(dense) == 1, (sizes, dense)
    return f"{sizes.pop():,} bytes for each of round 1's downloads against {dense.pop():,} raw"


def _demo(key: str) -> Any:
    return _get("demo_http_mlp/rounds.json", key)


def _demo_command_s() -> float:
    from datetime import datetime

    start = datetime.fromisoformat(_demo("started_at").replace("Z", "+00:00"))
    end = datetime.fromisoformat(_demo("finished_at").replace("Z", "+00:00"))
    return (end - start).total_seconds()


def _headline(key: str) -> Any:
    return _get("bandwidth_accuracy.json", key)


# (the README row's start, a heading whose section must hold the text, or None for the README's
# prose with its line breaks made spaces (see _where); an id for the test; the text the README
# must hold, computed from the result files)
COMPUTED: list[tuple[str | None, str, Callable[[], str]]] = [
    # the demo run kept in bench/results/demo_http_mlp
    (
        "### The demo run",
        "demo:wall_s",
        lambda: f"its 15 rounds took {_demo('summary.wall_s'):.1f} s, `summary.wall_s`",
    ),
    ("### The demo run", "demo:rounds", lambda: f"its {_demo('summary.rounds')} rounds took"),
    (
        "### The demo run",
        "demo:command_s",
        lambda: f"the whole command {_demo_command_s():.0f} s, from its `started_at`",
    ),
    (
        "### The demo run",
        "demo:load",
        lambda: (
            f"load average {_demo('machine.load_average_start'):.1f} at its start and "
            f"{_demo('machine.load_average_end'):.1f} at its end"
        ),
    ),
    (
        "### The demo run",
        "demo:date",
        lambda: f"`--out`, {_demo('finished_at')[:10]}, load average",
    ),
    # the demo's result as the README's first screen rounds it, and its provenance section
    *[
        (
            heading,
            f"demo:rounded {heading}",
            lambda: (
                f"it ends near {_demo('summary.final_accuracy') * 100:.0f}% accuracy with about "
                f"{_demo('summary.upload_ratio_vs_dense'):.0f}x fewer upload bytes than dense fp32"
            ),
        )
        for heading in ("# Plume", "### The demo run")
    ],
    # the headline's download column and the in-process download run
    (
        "| dense fp32 FedAvg |",
        "headline:dense_bytes",
        lambda: f"| {_headline('dense.dense_upload_bytes') / 1e9:.2f} GB (4 bytes a parameter",
    ),
    (
        "| dense fp32 FedAvg |",
        "headline:dense_run_bytes",
        lambda: f"its zstd'd frames {_headline('dense.upload_bytes') / 1e9:.2f} GB",
    ),
    (
        "## Headline result",
        "headline:ratio_vs_run_bytes",
        lambda: (
            "Against the dense run's own zstd'd fp32 bytes the ratio is "
            f"{_headline('upload_ratio_vs_dense_run_bytes'):.0f}x"
        ),
    ),
    (
        "## Headline result",
        "headline:delta_pp",
        lambda: f"Measured: 576x and {_headline('accuracy_delta_pp'):.2f} pp",
    ),
    (
        "## Headline result",
        "headline:same_step_control",
        lambda: (
            f"({_headline('dense_same_server_lr_final_accuracy') * 100:.2f}%, so compression costs "
            f"{-_headline('accuracy_delta_pp_vs_dense_same_server_lr'):.2f} pp against it)"
        ),
    ),
    (
        "### The headline run",
        "cnn_download:bytes_down",
        lambda: (
            f"recorded {_get('readme_cnn_download/rounds.json', 'summary.total_download_bytes'):,}"
            " bytes down, ten snapshots"
        ),
    ),
    (
        "### The headline run",
        "cnn_download:round1",
        lambda: (
            f"{_get('readme_cnn_download/rounds.json', 'summary.final_accuracy') * 100:.2f}% "
            f"accuracy and {_get('readme_cnn_download/rounds.json', 'summary.total_upload_bytes'):,}"
            f" bytes up, against the JSON's {_headline('compressed.accuracy_by_round')[0] * 100:.1f}%"
            f" and {_headline('compressed.upload_bytes_by_round')[0]:,} bytes"
        ),
    ),
    # the downlink ratios: against the snapshot served, raw fp32 and the fp16 snapshot
    (
        "### The headline run",
        "downlink:served",
        lambda: (
            f"it is {_served_ratios('snapshot_fp32_zstd_bytes')} fewer bytes than the snapshot the "
            "coordinator would otherwise serve (fp32 through zstd, "
            f"{_downlink('snapshot_fp32_zstd_bytes'):,} bytes)"
        ),
    ),
    (
        "### The headline run",
        "downlink:raw",
        lambda: (
            f"{_raw_ratios()} fewer than the raw fp32 model ({_downlink('dense_bytes'):,} bytes"
        ),
    ),
    (
        "### The headline run",
        "downlink:fp16",
        lambda: (
            f"{_served_ratios('snapshot_fp16_zstd_bytes')} fewer than the fp16 snapshot (zstd'd) a "
            f"device can ask for instead ({_downlink('snapshot_fp16_zstd_bytes'):,} bytes)"
        ),
    ),
    (
        "### The headline run",
        "downlink:where",
        lambda: (
            f"`details.downlink` (2-core {_get('coordinator_ingest.json', 'machine.cpu')}, "
            f"{_get('coordinator_ingest.json', 'date')};"
        ),
    ),
    (
        "| downlink, 1-5 versions behind |",
        "downlink_row:served",
        lambda: (
            f"| {_served_ratios('snapshot_fp32_zstd_bytes')} fewer bytes than the fp32 snapshot as "
            f"served (zstd'd, {_downlink('snapshot_fp32_zstd_bytes'):,} bytes)"
        ),
    ),
    (
        "| downlink, 1-5 versions behind |",
        "downlink_row:raw",
        lambda: f"{_raw_ratios()} fewer than raw fp32 ({_downlink('dense_bytes'):,} bytes",
    ),
    # the HTTP run kept in bench/results/readme_http_mlp
    (
        "### The headline run",
        "http_mlp:bytes_up",
        lambda: (
            f"uploaded {_http_mlp('summary.total_upload_bytes'):,} bytes of update payload "
            f"({_http_mlp('summary.upload_ratio_vs_dense'):.0f}x fewer than dense fp32 payloads"
        ),
    ),
    (
        "### The headline run",
        "http_mlp:wire_up",
        lambda: f"and {_http_mlp('ledger_totals.up.wire_bytes'):,} bytes on the wire in the rounds",
    ),
    (
        "### The headline run",
        "http_mlp:control",
        lambda: (
            f"{_http_control('up_wire_bytes'):,} bytes up and {_http_control('down_wire_bytes'):,} "
            f"bytes down in {_http_control('requests'):,} requests"
        ),
    ),
    (
        "### The headline run",
        "http_mlp:control_share",
        lambda: (
            "the devices sent "
            f"{(_http_control('up_wire_bytes') + _http_mlp('ledger_totals.up.wire_bytes')) / _http_mlp('ledger_totals.up.wire_bytes'):.1f}x"
            " `wire_up` in all"
        ),
    ),
    (
        "### The headline run",
        "http_mlp:download",
        lambda: (
            f"The devices downloaded {_http_mlp('ledger_totals.down.payload_bytes') / 1e6:.1f} MB "
            f"against {_http_mlp('ledger_totals.down.dense_bytes') / 1e6:.1f} MB of raw fp32 models "
            f"(4 B a parameter, {_http_mlp('ledger_totals.down.ratio_vs_dense'):.1f}x fewer"
        ),
    ),
    ("### The headline run", "http_mlp:snapshot", _http_snapshot_bytes),
    ("### The headline run", "http_mlp:per_round", _http_down_mb),
    (
        "### The headline run",
        "http_mlp:when",
        lambda: (
            f"{_http_mlp('started_at')[:10]} {_http_mlp('started_at')[11:16]} UTC, code of commit "
            f"{_http_mlp('code.git_commit')[:7]}"
        ),
    ),
    (
        "### The headline run",
        "http_mlp:http_per_device_round",
        lambda: (
            "about "
            f"{(_http_mlp('ledger_totals.up.wire_bytes') - _http_mlp('ledger_totals.up.payload_bytes')) / _http_mlp('ledger_totals.up.transfers') / 1e3:.1f}"
            " KB of HTTP per device and round"
        ),
    ),
    # SecAgg+
    (
        "| SecAgg+ at n=100",
        "secagg:ratio",
        lambda: f"upload {_get('secagg.json', 'upload_ratio_vs_plain'):.2f}x that plain frame",
    ),
    ("| SecAgg+ at n=100", "secagg:ratio_by_n", _secagg_ratios_by_n),
    (
        "| SecAgg+ at n=100",
        "secagg:unmask",
        lambda: f"unmask {_get('secagg.json', 'server_unmask_s'):.2f} s",
    ),
    (
        "| SecAgg+ accuracy, 20 rounds",
        "secagg:gap_seed0",
        lambda: (
            f"| {_get('secagg.json', 'accuracy_gap_pp'):.2f} pp below plain compressed (seed 0)"
        ),
    ),
    (
        "| SecAgg+ accuracy, 20 rounds",
        "secagg:gap_seed0_budget",
        lambda: f"| {_secagg_gaps()[0]:.2f} pp below plain compressed (seed 0)",
    ),
    (
        "| SecAgg+ accuracy, 20 rounds",
        "secagg:gap_mean",
        lambda: f"{sum(_secagg_gaps()) / 3:.2f} pp mean of 3 seeds",
    ),
    (
        "| SecAgg+ accuracy, 20 rounds",
        "secagg:gap_seeds_1_2",
        lambda: f"(seed 1: {_secagg_gaps()[1]:.2f}, seed 2: {_secagg_gaps()[2]:.2f} pp;",
    ),
    # the recommended robust aggregator on the CNN
    ("| recommended robust aggregator", "robust_cnn:seeds", _cnn_worst),
    (
        "### The targets table",
        "robust_cnn:recheck",
        lambda: (
            "seed 0 re-run after it gives "
            f"{_get('robustness_cnn_v4_check.json', 'worst_case_accuracy_fraction_20pct'):.3f} "
            f"(Intel Xeon, {_get('robustness_cnn_v4_check.json', 'date')}, "
            "`robustness_cnn_v4_check.json`)"
        ),
    ),
    # backdoor rows
    (
        "| backdoor defence",
        "backdoor:worst_seeds",
        lambda: (
            "(seed "
            f"{_get('robustness.json', 'backdoor_accuracy_per_seed').index(_get('robustness.json', 'backdoor_accuracy_max_over_seeds'))}),"
        ),
    ),
    (
        "| backdoor defence",
        "backdoor:seeds_met",
        lambda: (
            f"met on the mean, {_get('robustness.json', 'backdoor_seeds_meeting_target')} of "
            f"{len(_get('robustness.json', 'backdoor_seeds_complete'))} seeds"
        ),
    ),
    (
        "### The targets table",
        "backdoor:make_bench_10_seeds",
        lambda: (
            "where the runs reproduce, "
            f"{_get('robustness_backdoor_10seeds.json', 'backdoor_accuracy') * 100:.2f}%, "
            f"+{_get('robustness_backdoor_10seeds.json', 'main_task_loss_pp'):.2f} pp, "
            f"{_seeds_meeting('robustness_backdoor_10seeds.json', SCREEN_NORMBOUND)} of "
            f"{len(_get('robustness_backdoor_10seeds.json', 'backdoor_seeds'))} seeds, as in "
            "`robustness_backdoor_10seeds.json`"
        ),
    ),
    (
        "| backdoor, norm bounding + DP (weak",
        "weak_dp:mean",
        lambda: (
            f"| {_get('robustness.json', 'backdoor_screen_weak_dp_accuracy') * 100:.2f}% backdoor, "
            f"+{_get('robustness.json', 'backdoor_screen_weak_dp_main_task_loss_pp'):.2f} pp (mean of "
            f"{len(_defence('robustness.json', SCREEN_WEAK_DP, 'seeds_complete'))} seeds)"
        ),
    ),
    (
        "| backdoor, norm bounding + DP (weak",
        "weak_dp:seeds_2_9",
        lambda: (
            "seeds 2 and 9 at "
            f"+{_defence('robustness.json', SCREEN_WEAK_DP, 'worst_main_task_loss_pp_per_seed')[2]:.2f}"
            " and "
            f"+{_defence('robustness.json', SCREEN_WEAK_DP, 'worst_main_task_loss_pp_per_seed')[9]:.2f}"
            " pp"
        ),
    ),
    (
        "| backdoor, norm bounding + DP (weak",
        "weak_dp:seeds_met",
        lambda: (
            f"**{_get('robustness.json', 'backdoor_screen_weak_dp_seeds_meeting_target')} of "
            f"{len(_defence('robustness.json', SCREEN_WEAK_DP, 'seeds_complete'))} seeds**"
        ),
    ),
    (
        "| screen + norm bounding, and screen",
        "cnn_backdoor:screen_normbound",
        lambda: (
            "screen + norm bounding: "
            f"{_defence('robustness_backdoor_cnn.json', SCREEN_NORMBOUND, 'mean_backdoor_accuracy') * 100:.2f}% backdoor, "
            f"+{_defence('robustness_backdoor_cnn.json', SCREEN_NORMBOUND, 'mean_main_task_loss_pp'):.2f} pp "
            f"(worst seed {_defence('robustness_backdoor_cnn.json', SCREEN_NORMBOUND, 'max_backdoor_accuracy') * 100:.2f}%, "
            f"+{_defence('robustness_backdoor_cnn.json', SCREEN_NORMBOUND, 'max_main_task_loss_pp'):.2f} pp)"
        ),
    ),
    (
        "| screen + norm bounding, and screen",
        "cnn_backdoor:screen_weak_dp",
        lambda: (
            "+ weak DP: "
            f"{_defence('robustness_backdoor_cnn.json', SCREEN_WEAK_DP, 'mean_backdoor_accuracy') * 100:.1f}%, "
            f"+{_defence('robustness_backdoor_cnn.json', SCREEN_WEAK_DP, 'mean_main_task_loss_pp'):.2f} pp "
            f"(worst {_defence('robustness_backdoor_cnn.json', SCREEN_WEAK_DP, 'max_backdoor_accuracy') * 100:.1f}%, "
            f"+{_defence('robustness_backdoor_cnn.json', SCREEN_WEAK_DP, 'max_main_task_loss_pp'):.2f} pp)"
        ),
    ),
    (
        "| backdoor, norm bounding + DP without the screen",
        "no_screen",
        lambda: (
            f"| {_defence('robustness.json', DP_Z005, 'mean_backdoor_accuracy') * 100:.1f}% backdoor "
            f"(z = 0.05), {_defence('robustness.json', DP_Z001, 'mean_backdoor_accuracy') * 100:.1f}%"
            f" (z = 0.01), mean of {len(_defence('robustness.json', DP_Z001, 'seeds_complete'))} seeds"
        ),
    ),
    (
        "| the same (z = 0.01) with 2% attackers",
        "two_pct",
        lambda: (
            f"| {_defence('robustness_backdoor_fraction_002_10seeds.json', DP_Z001, 'mean_backdoor_accuracy') * 100:.1f}% backdoor, "
            f"+{_defence('robustness_backdoor_fraction_002_10seeds.json', DP_Z001, 'mean_main_task_loss_pp'):.2f} pp (mean); "
            f"worst seed {_defence('robustness_backdoor_fraction_002_10seeds.json', DP_Z001, 'max_backdoor_accuracy') * 100:.1f}%, "
            f"+{_defence('robustness_backdoor_fraction_002_10seeds.json', DP_Z001, 'max_main_task_loss_pp'):.2f} pp"
        ),
    ),
    (
        "| the same (z = 0.01) with 2% attackers",
        "two_pct:seeds",
        lambda: (
            "instead of 10% "
            f"({len(_defence('robustness_backdoor_fraction_002_10seeds.json', DP_Z001, 'seeds_complete'))} seeds)"
        ),
    ),
    (
        "| the same (z = 0.01) with 2% attackers",
        "five_pct",
        lambda: (
            f"at 5%: {_defence('robustness_backdoor_fraction_005.json', DP_Z001, 'mean_backdoor_accuracy') * 100:.0f}% "
            f"({len(_defence('robustness_backdoor_fraction_005.json', DP_Z001, 'seeds_complete'))} seeds)"
        ),
    ),
    (
        "### The targets table",
        "exact_clip_seed0",
        lambda: (
            "+"
            f"{_defence('robustness_backdoor_exactclip_seed0.json', SCREEN_WEAK_DP, 'mean_main_task_loss_pp'):.2f}"
            " pp main-task loss instead of +"
            f"{_defence('robustness.json', SCREEN_WEAK_DP, 'worst_main_task_loss_pp_per_seed')[0]:.2f} pp"
        ),
    ),
    # the simulator rows
    (
        "| simulator, digits-many |",
        "digits:vectorized",
        lambda: f"vectorized {_digits('vectorized', 'updates_per_s'):,.0f}/s)",
    ),
    (
        "| simulator, digits-many |",
        "digits:repeats",
        lambda: f"median of {_get('sim_throughput.json', 'sections.digits.settings.repeats')} runs",
    ),
    (
        "| simulator, digits-many |",
        "digits:startup",
        lambda: f"({_digits('pool', 'startup_s'):.2f} s, `startup_s`)",
    ),
    (
        "| simulator, digits-many |",
        "digits:counted",
        lambda: (
            f"counted the pool gives {_digits_counted('pool'):,.0f}/s, vectorized "
            f"{_digits_counted('vectorized'):,.0f}/s ({_digits_updates():,} updates)"
        ),
    ),
    (
        "| simulator, MNIST CNN vs plain torch loop |",
        "mnist:date",
        lambda: f"sequential 0.73x; {_get('sim_throughput.json', 'sections.mnist.date')}, with",
    ),
    (
        "### The targets table",
        "mnist:setup_s",
        lambda: (
            f"the run's setup ({_mnist_setup_s('pool'):.2f} s, `wall_s_with_setup_and_plain_loop`"
        ),
    ),
    (
        "| simulator, MNIST CNN vs plain torch loop |",
        "mnist:counted",
        lambda: (
            f"counted the pool gives {_mnist_counted('pool'):.2f}x, sequential "
            f"{_mnist_counted('sequential'):.2f}x"
        ),
    ),
    (
        "### The targets table",
        "mnist:xeon",
        lambda: (
            f"{_pool_ratio('sim_throughput_xeon.json'):.2f}x (pool) on a 2-vCPU Intel Xeon, "
            f"{_get('sim_throughput_xeon.json', 'date')}"
        ),
    ),
    (
        "### The targets table",
        "mnist:xeon_quiet",
        lambda: (
            f"{_pool_ratio('sim_throughput_xeon_quiet.json'):.2f}x (pool) on a 2-vCPU Intel Xeon, "
            f"{_get('sim_throughput_xeon_quiet.json', 'date')}"
        ),
    ),
    ("### The targets table", "mnist:xeon_speeds", _xeon_speeds),
    (
        "### The targets table",
        "mnist:eval",
        lambda: (
            f"{_pool_ratio('sim_throughput_amd_eval_driver.json'):.2f}x (pool) on a slower AMD EPYC, "
            f"{_get('sim_throughput_amd_eval_driver.json', 'date')}, with the round's evaluation in "
            "the driver or in the pool's workers alike "
            f"({_pool_ratio('sim_throughput_amd_eval_driver.json'):.3f}x, "
            f"{_pool_ratio('sim_throughput_amd_eval_workers.json'):.3f}x:"
        ),
    ),
    (
        "### The targets table",
        "mnist:avx2",
        lambda: (
            f"{_pool_ratio('sim_throughput_amd_avx2_unfold.json'):.3f}x (pool) on an AMD EPYC "
            f"without AVX-512, {_get('sim_throughput_amd_avx2_unfold.json', 'date')}, after "
            f"`TorchTrainer`'s `unfold_conv` ({_pool_ratio('sim_throughput_amd_avx2.json'):.3f}x "
            "before it)"
        ),
    ),
    (
        "### The targets table",
        "mnist:avx512",
        lambda: (
            f"{_pool_ratio('sim_throughput_amd_avx512_v1098.json'):.3f}x (pool) on an AVX-512 AMD "
            "EPYC whose arithmetic is less than half the headline machine's, "
            f"{_get('sim_throughput_amd_avx512_v1098.json', 'date')}"
        ),
    ),
]


@pytest.mark.parametrize(("start", "fig", "want"), COMPUTED, ids=[i for _, i, _ in COMPUTED])
def test_the_readme_quotes_what_the_result_files_give(
    start: str | None, fig: str, want: Callable[[], str]
) -> None:
    # Execute
    text = want()
    # Assert
    assert text in _where(start), f"README.md does not say {text!r} ({fig}; at {start!r})"


def test_the_demo_ratio_is_the_run_kept() -> None:
    # The demo's provenance wraps: "0.9115 and 74.7x in the run kept\nin ..."
    ratio = _get("demo_http_mlp/rounds.json", "summary.upload_ratio_vs_dense")
    text = _section("### The demo run")
    assert f"and {ratio:.1f}x in the run kept in `bench/results/demo_http_mlp`" in text
