"""Render docs/benchmarks.md from bench/results/*.json, so the docs quote only measured numbers.

python bench/summarize.py            # rewrite docs/benchmarks.md
python bench/summarize.py --check    # exit 1 if docs/benchmarks.md is stale

A results file marked as a --quick smoke run (`"quick": true`, `settings.quick`, or a
`*_quick` name; see bench/_common.py) is refused: nothing is written and the exit status is 1.
Quick sections of a sectioned file (sim_throughput.json) and quick files among the globbed
extras (server_opt_seed*.json, robustness_backdoor_fraction_*.json) are left out, with a note.
A file that records no `command` shows the command the docs give for it (DOC_COMMANDS), marked
as taken from that doc; tests/mobile_sim/test_s24e_summarize_commands.py checks each against the
options the file's `settings` record. A file with neither is shown as "Command: not recorded". A
command recorded as a bare script name (`server_opt.py ...`, argv[0]'s name) is shown as `python
bench/server_opt.py ...`, the same command run from the repository root. A file whose recorded
command wrote outside the repository (COPIED) says so and gives the same run with the default
--out. A sectioned file (sim_throughput.json) shows each section's own recorded command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import is_quick  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"


class QuickResults(Exception):
    """A results file that would be published is from a --quick smoke run."""


def _extras(pattern: str) -> list[tuple[Path, dict[str, Any]]]:
    """The globbed extra files, less those from --quick runs (named on stderr)."""
    out = []
    for path in sorted(RESULTS.glob(pattern)):
        doc = json.loads(path.read_text())
        if is_quick(doc, path.stem):
            print(f"summarize: left out {path.name}: a --quick smoke run", file=sys.stderr)
            continue
        out.append((path, doc))
    return out


# Result files that record no `command`: the command the docs give for them (file stem ->
# (command, doc)). Never a command made up here: each is quoted from the doc named, and
# tests/mobile_sim/test_s24e_summarize_commands.py parses it with the script's own options and
# compares it with the file's `settings` (bench/secagg.py records every option it parsed) or its
# recorded models, batch sizes and step count (bench/onnx_train.py).
DOC_COMMANDS: dict[str, tuple[str, str]] = {
    "secagg": ("python bench/secagg.py", "docs/secure-aggregation.md"),
    "secagg_seed1_budget": (
        "python bench/secagg.py --skip-timing --seed 1 --plain-from "
        "bench/results/secagg_seed1_pool1.json --out bench/results/secagg_seed1_budget.json",
        "docs/secure-aggregation.md",
    ),
    "secagg_seed2_budget": (
        "python bench/secagg.py --skip-timing --seed 2 --plain-from "
        "bench/results/secagg_seed2_pool1.json --out bench/results/secagg_seed2_budget.json",
        "docs/secure-aggregation.md, which gives seed 1's and says 'the same with 2 for seed 2'",
    ),
    "onnx_train": ("python bench/onnx_train.py", "docs/devices.md"),
}

# Result files whose recorded command wrote outside the repository, so the committed file is a
# copy of that run's output (file stem -> (the same run with the default --out, the doc that
# says so)). The test checks that the two commands differ in --out only.
COPIED: dict[str, tuple[str, str]] = {
    "privacy": ("python bench/privacy.py", "docs/privacy.md"),
}


def _runnable(command: str) -> str:
    """A recorded command as run from the repository root."""
    first = command.split(maxsplit=1)[0]
    if first.endswith(".py") and "/" not in first and (ROOT / "bench" / first).is_file():
        # Recorded as argv[0]'s name (older server_opt.py / sim_throughput.py files).
        command = "python bench/" + command
    return command


def _command(doc: dict[str, Any], stem: str = "") -> str:
    """The recorded command as a runnable line; else the docs' command, marked as such; else
    "not recorded"."""
    command = doc.get("command")
    if not isinstance(command, str) or not command.strip():
        settings = doc.get("settings")
        out = settings.get("out") if isinstance(settings, dict) else None
        copied = ""
        # The run wrote the committed file itself when its --out was bench/results/<stem>.json
        # of some checkout (relative, or absolute under whatever directory the repository was
        # in then): the page must not depend on where this checkout lives.
        if isinstance(out, str) and Path(out).parts[-3:] != ("bench", "results", f"{stem}.json"):
            copied = (
                f"; its `settings` say the run wrote `{out}`, so the committed file is a copy of "
                "that output"
            )
        if stem in DOC_COMMANDS:
            given, source = DOC_COMMANDS[stem]
            return f"`{given}` (from {source}: the file records no command{copied})"
        note = doc.get("note")
        if isinstance(note, str) and "Run as `" in note:
            # bench/secagg.py's --plain-from files: the command written into the file's note.
            recorded = note.split("Run as `", 1)[1].split("`", 1)[0]
            return f"`{recorded}` (from the file's `note`{copied})"
        if isinstance(doc.get("sections"), dict):
            return "each section records its own (below)"
        settings = doc.get("settings")
        if isinstance(settings, dict) and "out" in settings:
            # bench/secagg.py's older files: every option it parsed, not the command line.
            return "not recorded (the file's `settings` hold every option the run parsed)"
        return "not recorded"
    command = _runnable(command)
    if stem in COPIED:
        same, source = COPIED[stem]
        return (
            f"`{command}` as recorded, whose `--out` is outside the repository: the committed "
            f"`bench/results/{stem}.json` is a copy of that run's output ({source} says so). "
            f"The same run written into the repository: `{same}`"
        )
    return f"`{command}`"


# file stem -> (title, reproduce command, [(key, target text or "")])
BENCHES: list[tuple[str, str, str, list[tuple[str, str]]]] = [
    (
        "bandwidth_accuracy",
        "Upload bytes vs accuracy (MNIST CNN, issue 2)",
        "python bench/bandwidth_accuracy.py",
        [
            ("dense_final_accuracy", ""),
            ("compressed_final_accuracy", ""),
            ("accuracy_delta_pp", ">= -1.0 pp"),
            ("upload_ratio_vs_dense", ">= 500x"),
            ("upload_ratio_vs_dense_run_bytes", ""),
        ],
    ),
    (
        "codec",
        "Codec speed (one MNIST-CNN update, one core)",
        "python bench/codec.py",
        [
            ("encode_ms", "<= 20 ms"),
            ("decode_ms", "<= 3 ms"),
            ("memcpy_dense_ms", ""),
            ("frame_bytes", ""),
            ("ratio_vs_dense", ""),
        ],
    ),
    (
        "coordinator_ingest",
        "Coordinator ingest and downlink (issue 3)",
        "python bench/coordinator_ingest.py",
        [
            ("inprocess_updates_per_s", ">= 1000/s"),
            ("http_updates_per_s", ">= 300/s"),
            ("dense_updates_per_s", ""),
            ("downlink_ratio_vs_dense", ">= 10x per lag"),
            ("load_lost_updates", "0"),
            ("load_p50_upload_ms", ""),
            ("load_p99_upload_ms", ""),
        ],
    ),
    (
        "secagg",
        "Secure aggregation (issue 4)",
        "python bench/secagg.py",
        [
            ("upload_ratio_vs_plain", "<= 2x"),
            ("server_unmask_s", "<= 1 s at n=100"),
            ("accuracy_secure", ""),
            ("accuracy_plain", ""),
            ("accuracy_gap_pp", "<= 1 pp"),
        ],
    ),
    (
        "robustness",
        "Byzantine robustness (issue 5)",
        "python bench/robustness.py",
        [
            ("worst_case_accuracy_fraction_20pct", ">= 0.95"),
            ("backdoor_defense", ""),
            ("backdoor_accuracy", "<= 0.10"),
            ("main_task_loss_pp", "<= 1 pp"),
            ("target_met_backdoor", "on every seed"),
            ("target_met_backdoor_on_mean", "on the mean"),
            ("backdoor_seeds_meeting_target", ""),
            ("backdoor_seeds_complete", ""),
            ("backdoor_screen_weak_dp_defense", ""),
            ("backdoor_screen_weak_dp_accuracy", "<= 0.10"),
            ("backdoor_screen_weak_dp_main_task_loss_pp", "<= 1 pp"),
            ("backdoor_screen_weak_dp_max_main_task_loss_pp", "<= 1 pp on every seed"),
            ("backdoor_screen_weak_dp_seeds_meeting_target", ""),
            ("backdoor_screen_weak_dp_noise_to_signal", ""),
            ("backdoor_literal_normbound_dp_defense", ""),
            ("backdoor_literal_normbound_dp_accuracy", "<= 0.10"),
            ("backdoor_literal_normbound_dp_main_task_loss_pp", "<= 1 pp"),
        ],
    ),
    (
        "robustness_cnn_v3",
        "Byzantine robustness on the MNIST CNN, robust aggregator cosfilter+geomed, seed 0 (issue 5)",
        "python bench/robustness.py --model mnist_cnn --aggregators cosfilter+geomed "
        "--clean-only fedavg --skip-backdoor --name robustness_cnn_v3 --workers 1",
        [
            ("worst_case_accuracy_fraction_20pct", ">= 0.95"),
            ("worst_case_accuracy_fraction_20pct_of_own_no_attack", ""),
            ("worst_case_attack_20pct", ""),
        ],
    ),
    (
        "robustness_cnn_seed1_v3",
        "Byzantine robustness on the MNIST CNN, robust aggregator cosfilter+geomed, seed 1 (issue 5)",
        "python bench/robustness.py --model mnist_cnn --aggregators cosfilter+geomed "
        "--clean-only fedavg --skip-backdoor --name robustness_cnn_seed1_v3 --workers 1 --seed 1",
        [
            ("worst_case_accuracy_fraction_20pct", ">= 0.95"),
            ("worst_case_accuracy_fraction_20pct_of_own_no_attack", ""),
            ("worst_case_attack_20pct", ""),
        ],
    ),
    (
        "robustness_cnn_seed2_v3",
        "Byzantine robustness on the MNIST CNN, robust aggregator cosfilter+geomed, seed 2, held out (issue 5)",
        "python bench/robustness.py --model mnist_cnn --aggregators cosfilter+geomed "
        "--clean-only fedavg --skip-backdoor --name robustness_cnn_seed2_v3 --workers 2 --seed 2",
        [
            ("worst_case_accuracy_fraction_20pct", ">= 0.95"),
            ("worst_case_accuracy_fraction_20pct_of_own_no_attack", ""),
            ("worst_case_attack_20pct", ""),
        ],
    ),
    (
        "robustness_cnn_v4_check",
        "Byzantine robustness on the MNIST CNN, cosfilter+geomed, seed 0, re-run after "
        "cosfilter's momentum re-anchoring (commit b5c7927), on the Intel Xeon VM",
        "python bench/robustness.py --model mnist_cnn --aggregators cosfilter+geomed "
        "--clean-only fedavg --skip-backdoor --name robustness_cnn_v4_check --workers 2",
        [
            ("worst_case_accuracy_fraction_20pct", ">= 0.95"),
            ("worst_case_accuracy_fraction_20pct_of_own_no_attack", ""),
            ("worst_case_attack_20pct", ""),
        ],
    ),
    (
        "robustness_backdoor_cnn",
        "Backdoor on the MNIST CNN, 10% attackers, seeds 0-2 (issue 5)",
        "python bench/robustness.py --model mnist_cnn --skip-matrix --backdoor-seeds 0 1 2 "
        "--backdoor-defenses ... --name robustness_backdoor_cnn --workers 2",
        [
            ("backdoor_defense", ""),
            ("backdoor_accuracy", "<= 0.10"),
            ("main_task_loss_pp", "<= 1 pp"),
            ("target_met_backdoor", "on every seed"),
            ("backdoor_screen_weak_dp_defense", ""),
            ("backdoor_screen_weak_dp_accuracy", "<= 0.10"),
            ("backdoor_screen_weak_dp_main_task_loss_pp", "<= 1 pp"),
            ("backdoor_screen_weak_dp_target_met_every_seed", "on every seed"),
        ],
    ),
    (
        "robustness_sparse_support",
        "Trimmed mean with the support rule for top-k reports, MNIST MLP, seed 0",
        "python bench/robustness.py --aggregators trimmed_mean:0.2 trimmed_mean:0.2,support=1 "
        "--attacks signflip scaling alie ipm:epsilon=0.1 labelflip gaussian --fractions 0.2 "
        "--clean-only fedavg --skip-backdoor --name robustness_sparse_support --workers 1",
        [],
    ),
    (
        "robustness_sparse_support_seed1",
        "Trimmed mean with the support rule for top-k reports, MNIST MLP, seed 1 (held out)",
        "python bench/robustness.py --aggregators trimmed_mean:0.2 trimmed_mean:0.2,support=1 "
        "--attacks signflip scaling alie ipm:epsilon=0.1 labelflip gaussian --fractions 0.2 "
        "--clean-only fedavg --skip-backdoor --name robustness_sparse_support_seed1 --workers 1 "
        "--seed 1",
        [],
    ),
    (
        "server_opt",
        "Server optimizers on the compressed MNIST CNN (FedAvg, FedAvgM, FedAdam, FedYogi)",
        "python bench/server_opt.py",
        [("best_final", "")],
    ),
    ("privacy", "Privacy vs utility (issue 5)", "python bench/privacy.py", []),
    (
        "onnx_train",
        "On-device training on onnxruntime (issue 6)",
        "python bench/onnx_train.py",
        [("ort_over_torch_step_time", "<= 1.5x"), ("parity_max_rel_err", "<= 1e-4")],
    ),
    (
        "sim_throughput",
        "Simulator throughput (issue 7)",
        "python bench/sim_throughput.py",
        [
            ("mnist_cnn_wall_ratio_vs_plain_loop", "<= 0.5"),
            ("mnist_cnn_backend", ""),
            ("mnist_cnn_ratios_by_backend", ""),
            ("digits_many_updates_per_s", ">= 5000/s"),
            ("million_devices_rss_gb", "<= 2 GB"),
        ],
    ),
    (
        "cli_startup",
        "CLI start-up (`plume --help` and each subcommand's help, fresh interpreters)",
        "python bench/cli_startup.py",
        [
            ("help_median_ms", ""),
            ("slowest_help_median_ms", ""),
            ("full_stack_help_median_ms", ""),
            ("python_floor_median_ms", ""),
            ("speedup_vs_full_stack", ""),
        ],
    ),
    (
        "partition",
        "Dirichlet partition time (mobile_sim.partition, 100 clients, CPU seconds)",
        "python bench/partition.py",
        [
            ("mnist_x6_hopeless_cpu_s", ""),
            ("mnist_x6_hopeless_over_stream_floor", ""),
            ("mnist_x6_hopeless_before_over_now", ""),
            ("synthetic_1e6_hopeless_cpu_s", ""),
            ("synthetic_1e6_hopeless_over_stream_floor", ""),
            ("synthetic_1e6_hopeless_before_over_now", ""),
            ("mnist_train_dirichlet_over_iid", ""),
        ],
    ),
    (
        "json_checks",
        "JSON strictness checks on the busiest route (a repeated key's 422, per check-in)",
        "python bench/json_checks.py",
        [
            ("checks_us", ""),
            ("parse_us", ""),
            ("checks_over_parse", ""),
            ("check_in_ms", ""),
            ("checks_share_of_check_in_pct", ""),
        ],
    ),
]


def _figure(key: str, value: Any) -> str:
    """A headline figure as the page prints it; a `*_mib` field (RSS from VmHWM, KiB / 1024)
    says MiB."""
    text = _fmt(value)
    return f"{text} MiB" if key.endswith("_mib") and value is not None else text


def _code(doc: dict[str, Any]) -> str:
    """ " Code: commit C." (", with uncommitted changes" when git_dirty) for a file that records
    the commit it was written at (bench/_common.write_results); "" for one that does not."""
    commit = doc.get("git_commit") if isinstance(doc, dict) else None
    if not isinstance(commit, str) or not commit:
        return ""
    dirty = " with uncommitted changes" if doc.get("git_dirty") else ""
    return f" Code: commit `{commit[:12]}`{dirty}."


def _plain_arm(doc: dict[str, Any], stem: str) -> str:
    """ " Plain arm: ..." for a bench/secagg.py file whose plain arm came from another file
    (--plain-from): every file it passed through, to the run that ran it; "" otherwise."""
    source = doc.get("plain_from")
    if not isinstance(source, str) or not source:
        return ""
    from bench.secagg import plain_chain

    chain = plain_chain(RESULTS / f"{stem}.json")[1:]
    via = "".join(f", which had reused `{c}`'s" for c in chain[1:])
    return (
        f" Plain arm: not run in this file's run; reused with --plain-from from `{chain[0]}`"
        f"{via}, so it ran in the run that wrote `{chain[-1]}`."
    )


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        text = json.dumps(value)
        return text if len(text) <= 120 else text[:117] + "..."
    return str(value)


def _machine(doc: dict[str, Any]) -> str:
    m = doc.get("machine") if isinstance(doc, dict) else None
    if isinstance(m, dict):
        cap = m.get("torch_cpu_capability")
        isa = f" ({cap})" if cap else ""
        cpu, cores, mem = m.get("cpu", "?"), m.get("cores", "?"), m.get("memory_gib", "?")
        return f"{cpu}{isa}, {cores} cores, {mem} GiB"
    return str(m) if m else "not recorded"


_PER_TENSOR_SPLIT_CHANGED = "2026-11-30T21:40"


def _sweep_table() -> list[str]:
    """The knob sweep around the headline config (bench/bandwidth_accuracy.py --explore)."""
    path = RESULTS / "bandwidth_accuracy_explore.json"
    if not path.exists():
        return []
    doc = json.loads(path.read_text())
    base = doc.get("base_config", {})
    lines = [
        f"Knob sweep (`{doc.get('command')}`, {doc.get('date')}): each row changes one knob of "
        f"the compressed config (top-k {base.get('topk')}, {base.get('bits')}-bit, "
        f"{base.get('scope')} top-k, error feedback, server step {base.get('server_lr')}); the "
        f"dense fp32 run reached {_fmt(doc.get('dense_final_accuracy'))}. Index codings are "
        "lossless, so they change bytes, not accuracy: see `bench/results/codec_knobs.json`.",
        "",
        "| change | final accuracy | vs dense (pp) | upload ratio vs fp32 |",
        "|---|---|---|---|",
    ]
    # Commit 2e7b1fd (2026-11-30 21:45 UTC) gave every tensor at least one coordinate under
    # per-tensor top-k; a sweep run before it measured the old split (ISO dates compare as text)
    before_split = str(doc.get("date", "")) < _PER_TENSOR_SPLIT_CHANGED
    for name, v in doc.get("variants", {}).items():
        label = f"`{name}`"
        if name == "scope=per_tensor" and before_split:
            label += " (run before 2e7b1fd; see below)"
        lines.append(
            f"| {label} | {_fmt(v.get('final_accuracy'))} | "
            f"{_fmt(v.get('accuracy_delta_pp_vs_dense'))} | {_fmt(v.get('upload_ratio_vs_dense'))}x |"
        )
    lines += ["", *_sweep_reading(doc, before_split)]
    return lines + [""]


def _pp(value: float) -> str:
    """A difference in pp, signed ("0 pp" for none)."""
    return f"{value:+.3g} pp" if value else "0 pp"


def _sweep_reading(doc: dict[str, Any], before_split: bool) -> list[str]:
    """The prose under the knob sweep, every figure computed from the file: the rows furthest
    from dense, error feedback's row and how often a device takes part, and how far the rest
    lie from dense."""
    base = doc.get("base_config", {})
    deltas = {
        name: float(v["accuracy_delta_pp_vs_dense"])
        for name, v in doc.get("variants", {}).items()
        if isinstance(v.get("accuracy_delta_pp_vs_dense"), (int, float))
    }
    if not deltas:
        return []
    ranked = sorted(deltas, key=lambda n: -abs(deltas[n]))
    top = ranked[:2]
    shown = " and ".join(f"`{n}` ({_pp(deltas[n])})" for n in top)
    lines = [f"Reading the sweep: the rows furthest from dense are {shown}."]
    if {n.split("=")[0] for n in top} == {"server_lr", "scope"}:
        lines += [
            "Top-k keeps each device's largest coordinates, and FedAvg divides every coordinate",
            "by the whole cohort's weight although only the devices that ranked it sent it, so",
            f"the averaged step shrinks; the base config's server step of {base.get('server_lr')}",
            "restores it. Per-tensor top-k spends the same k on every layer in proportion to its",
            "size, where global top-k follows the update's mass.",
        ]
    knobs = _knobs_date()
    if before_split:
        lines += [
            "The `scope=per_tensor` row ran before commit 2e7b1fd (2026-11-30) changed the",
            "split: the old split gave a tensor whose proportional share of k rounded to zero no",
            "coordinate at all, every round, and its residual only grew (the CNN's small bias",
            "tensors at this k; the commit's message lists the shares); now every tensor gets at",
            "least one (compression/_topk.py `split_k`, wire-format.md section 5), so the row",
            "does not reproduce bit for bit and was not re-run.",
        ]
        if knobs is not None and knobs < _PER_TENSOR_SPLIT_CHANGED:
            lines.append(
                "The same holds for `scope.per_tensor` in `bench/results/codec_knobs.json`."
            )
    clients, per_round, rounds = base.get("clients"), base.get("per_round"), base.get("rounds")
    if "no_error_feedback" in deltas and clients and per_round and rounds:
        lines += [
            f"Without error feedback the run ends {_pp(deltas['no_error_feedback'])} from dense:",
            f"each of the {clients} devices takes part in about {per_round * rounds / clients:g}",
            f"of the {rounds} rounds, so its residual is rarely sent at all.",
        ]
    rest = [abs(deltas[n]) for n in ranked[2:] if n != "no_error_feedback"]
    if rest:
        lines.append(
            f"Single runs (one seed each): the other rows are within {max(rest):.3g} pp of dense."
        )
    return lines


def _knobs_date() -> str | None:
    """When bench/results/codec_knobs.json was measured, None if there is none."""
    path = RESULTS / "codec_knobs.json"
    if not path.exists():
        return None
    date = json.loads(path.read_text()).get("date")
    return date if isinstance(date, str) else None


def _fraction_table() -> list[str]:
    """Backdoor runs at other attacker fractions (bench/robustness.py --backdoor-malicious)."""
    files = _extras("robustness_backdoor_fraction_*.json")
    if not files:
        return []
    lines = [
        "Backdoor at other attacker fractions (each file's `command`; robustness.json's",
        "headline is at 10%). Backdoor accuracy is each seed's worse attack variant; loss is",
        "against FedAvg without attack, same seed.",
        "",
        "| file | malicious | defence | seeds | backdoor % mean / max | loss pp mean / max "
        "| target on every seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for path, doc in files:
        for name, d in doc.get("backdoor_by_defense", {}).items():
            if d.get("mean_backdoor_accuracy") is None:
                continue
            lines.append(
                f"| `{path.stem}` | {doc.get('backdoor_malicious')} | `{name}` | "
                f"{len(d['seeds_complete'])} | {100 * d['mean_backdoor_accuracy']:.1f} / "
                f"{100 * d['max_backdoor_accuracy']:.1f} | {d['mean_main_task_loss_pp']:+.2f} / "
                f"{d['max_main_task_loss_pp']:+.2f} | {'yes' if d['target_met_every_seed'] else 'no'} |"
            )
    return lines + [""]


# bench/robustness.py files whose result is the accuracy matrix itself (no headline rule).
MATRIX_TABLES = {"robustness_sparse_support", "robustness_sparse_support_seed1"}


def _matrix_table(doc: dict[str, Any]) -> list[str]:
    """Each rule's final accuracy without attack and under each attack, one table per
    attacker fraction (bench/robustness.py's `no_attack_accuracy` and `accuracy`); a run that
    diverged says so, one not run is a dash."""
    clean = doc.get("no_attack_accuracy") or {}
    diverged = {
        (r["aggregator"], r["attack"], f"{round(100 * r['malicious'])}pct")
        for r in doc.get("runs", [])
        if r.get("kind") == "matrix" and r.get("diverged")
    }
    lines: list[str] = []
    for frac, cells in (doc.get("accuracy") or {}).items():
        attacks = list(dict.fromkeys(a for row in cells.values() for a in row))
        lines += [
            f"Final accuracy, {frac.removesuffix('pct')}% malicious devices (the first column "
            "without attack):",
            "",
            "| rule | no attack | " + " | ".join(attacks) + " |",
            "|---|---|" + "---|" * len(attacks),
        ]
        for rule in dict.fromkeys([*clean, *cells]):
            row = cells.get(rule, {})
            shown = [
                "diverged (0)"
                if (rule, attack, frac) in diverged
                else (_fmt(row[attack]) if attack in row else "–")
                for attack in attacks
            ]
            no_attack = _fmt(clean[rule]) if rule in clean else "–"
            lines.append(f"| `{rule}` | {no_attack} | " + " | ".join(shown) + " |")
        lines.append("")
    return lines


def _server_opt_table(doc: dict[str, Any]) -> list[str]:
    """Every arm of bench/server_opt.py: spec, server step, accuracy, bytes."""
    s = doc.get("settings", {})
    runs = [doc] + [d for _, d in _extras("server_opt_seed*.json")]
    common = [a for a in doc.get("arms", {}) if all(a in r.get("arms", {}) for r in runs)]
    spread = ""
    if len(runs) > 1 and common:
        # How far another seed moves one arm's final accuracy, from the held-out seeds' files.
        moves = {
            a: 100
            * (
                max(r["arms"][a]["final_accuracy"] for r in runs)
                - min(r["arms"][a]["final_accuracy"] for r in runs)
            )
            for a in common
        }
        widest = max(moves, key=lambda a: moves[a])
        spread = (
            f" One seed: across the {len(runs)} seeds below, another seed moves an arm's final "
            f"accuracy by up to {moves[widest]:.3g} pp (`{widest}`), so smaller differences "
            "here are not a ranking."
        )
    lines = [
        f"Seed {s.get('seed')}, {s.get('rounds')} rounds, {s.get('codec')}; every arm sees the "
        f"same devices in the same rounds.{spread}",
        "",
        "| arm | aggregator | server step | final accuracy | best round | upload bytes |",
        "|---|---|---|---|---|---|",
    ]
    for name, a in doc.get("arms", {}).items():
        lines.append(
            f"| `{name}` | `{a['aggregator']}` | {_fmt(a['server_lr'])} | "
            f"{_fmt(a['final_accuracy'])} | {_fmt(a['best_accuracy'])} | {a['upload_bytes']:,} |"
        )
    if len(runs) > 1 and common:
        seeds = [r["settings"]["seed"] for r in runs]
        # The first held-out file's own command, runnable as shown (the others differ by seed).
        held_out = str(runs[1].get("command", "server_opt.py"))
        held_out = held_out.removeprefix("python ").removeprefix("bench/")
        lines += [
            "",
            f"Across seeds {seeds} (`server_opt_seed*.json`, e.g. `python bench/{held_out}` and "
            "the same for the other seeds; the learning rates were chosen on seed 0, so the other "
            "seeds are held out). The final round alone is noisy, so the mean of each run's last "
            "five rounds is given too.",
            "",
            "| arm | final accuracy per seed | mean | last-5-round mean per seed | mean |",
            "|---|---|---|---|---|",
        ]
        for name in common:
            fin = [r["arms"][name]["final_accuracy"] for r in runs]
            last5 = [sum(r["arms"][name]["accuracy_per_round"][-5:]) / 5 for r in runs]
            lines.append(
                f"| `{name}` | {' / '.join(_fmt(v) for v in fin)} | {_fmt(sum(fin) / len(fin))} | "
                f"{' / '.join(_fmt(v) for v in last5)} | {_fmt(sum(last5) / len(last5))} |"
            )
    return lines + [""]


# Wording of a note that committed result files carry and bench/robustness.py no longer writes:
# the MLP runs' model_note called the recommended robust aggregator (DEFAULT_ROBUST,
# cosfilter+geomed) "the default aggregator", which read as Plume's default (--aggregator
# defaults to fedavg). The files stay as written; the doc shows the note as the script now
# writes it (bench/robustness.py MLP_MODEL_NOTE).
_REWORDED = {
    "the default aggregator's CNN runs are in robustness_cnn*.json.": (
        "the recommended robust aggregator's (cosfilter+geomed) CNN runs are in "
        "robustness_cnn*.json."
    ),
}


def _load(doc: dict[str, Any], when: str) -> str:
    value = doc.get("machine", {}).get(f"load_average_{when}")
    return "not recorded" if value is None else f"{value:.1f}"


def _partition_table(doc: dict[str, Any]) -> list[str]:
    """bench/partition.py's label sets: each variant's median CPU seconds (min-max)."""
    results = doc.get("results")
    if not isinstance(results, dict) or not results:
        return []
    settings = doc.get("settings", {})
    variants = list(next(iter(results.values()))["cpu_s"])
    out = [
        f"CPU seconds, median (min-max) of {settings.get('repeats')} runs each "
        f"({settings.get('million_repeats', settings.get('repeats'))} on the 10^6 labels), timed "
        f"round-robin; `dirichlet` is Dirichlet({settings.get('alpha')}), `dirichlet_hopeless` "
        f"Dirichlet({settings.get('hopeless_alpha')}), which makes all "
        f"{settings.get('max_tries')} draws and fails; `_before` is mobile_sim/partition.py at "
        f"`{settings.get('compare_rev')}` (commit `{str(settings.get('compare_commit'))[:12]}`). "
        f"1-minute load average {_load(doc, 'start')} at the start, {_load(doc, 'end')} at the "
        "end.",
        "",
        "| labels | " + " | ".join(f"`{v}`" for v in variants) + " |",
        "|---" * (len(variants) + 1) + "|",
    ]
    for name, entry in results.items():
        cells = [
            f"{s['median']:.3g} ({s['min']:.3g}-{s['max']:.3g})" for s in entry["cpu_s"].values()
        ]
        out.append(f"| `{name}` ({entry['labels']:,}) | " + " | ".join(cells) + " |")
    return out + [""]


def _notes(doc: dict[str, Any]) -> list[str]:
    """The doc lines of a result file's `note`, `notes` and `*_note` keys, by key. A robustness
    file whose `backdoor_runs` is empty (--skip-backdoor) gets no `backdoor_*` note: those
    describe figures the file does not have (bench/robustness.py writes them on every run)."""
    no_backdoor = "backdoor_runs" in doc and not doc["backdoor_runs"]
    out = []
    for key in sorted(k for k in doc if k in ("notes", "note") or k.endswith("_note")):
        if no_backdoor and key.startswith("backdoor_"):
            continue
        value = doc[key]
        text = value if isinstance(value, str) else json.dumps(value)
        for old, new in _REWORDED.items():
            text = text.replace(old, new)
        out += [f"Note (`{key}`): {text}", ""]
    return out


def _sections_line(doc: dict[str, Any], sections: dict[str, Any]) -> list[str]:
    """A file whose sections run separately (sim_throughput.json): each section's time, and its
    own machine where it recorded one. Quick sections are left out, by name; headline keys
    taken from a quick section are refused."""
    for key, value in doc.items():
        if key.endswith("_from_section") and is_quick(sections.get(value), str(value)):
            raise QuickResults(f"{key} is {value!r}, a --quick smoke run: not publishing it")
    rows, quick = [], []
    for name, sec in sections.items():
        if not isinstance(sec, dict):
            continue
        if is_quick(sec, name):
            quick.append(name)
            continue
        # A section's own machine, or that it recorded none: never the file's current one.
        if isinstance(sec.get("machine"), dict):
            own = f", {sec.get('date', 'date not recorded')} on {_machine(sec)}"
        else:
            why = sec.get("machine_note")
            own = f", machine not recorded ({why})" if why else ", machine not recorded"
        own += _code(sec)
        command = sec.get("command")
        shown = "not recorded"
        if isinstance(command, str):
            # "... --out /tmp/x.json (section copied into this file)": the comment stays outside
            # the command.
            run, sep, comment = command.partition(" (")
            shown = f"`{_runnable(run)}`" + (f" ({comment}" if sep else "")
        rows.append(f"| `{name}` | {sec.get('measured_at', 'not recorded')}{own} | {shown} |")
    lines = [
        "Sections, each measured separately, with the command each recorded (a section whose "
        "run wrote elsewhere says it was copied into this file):",
        "",
        "| section | measured at | command |",
        "|---|---|---|",
        *rows,
        "",
    ]
    if quick:
        lines.append(f"Left out, --quick smoke runs: {', '.join(quick)}.")
    return lines + [""]


# Result files the README quotes that have no section above (stem or folder, what they hold,
# headline keys). Each shows its recorded command, or DOC_COMMANDS's, as the sections do.
OTHER_FILES: list[tuple[str, str, list[str]]] = [
    (
        "secagg_seed0_budget",
        "SecAgg+ accuracy, seed 0 again with the plain arm reused (--plain-from)",
        ["accuracy_plain", "accuracy_secure", "accuracy_gap_pp"],
    ),
    (
        "secagg_seed1_budget",
        "SecAgg+ accuracy, seed 1 (the README's 3-seed row; seed 0 is secagg.json)",
        ["accuracy_plain", "accuracy_secure", "accuracy_gap_pp"],
    ),
    (
        "secagg_seed2_budget",
        "SecAgg+ accuracy, seed 2",
        ["accuracy_plain", "accuracy_secure", "accuracy_gap_pp"],
    ),
    (
        "sim_throughput_xeon",
        "Simulator, MNIST CNN vs plain torch loop, on the Intel Xeon VM (docs/simulator.md, "
        "'On another machine')",
        ["mnist_cnn_wall_ratio_vs_plain_loop", "mnist_cnn_ratios_by_backend"],
    ),
    (
        "sim_throughput_xeon_quiet",
        "The same, repeated on the Xeon VM",
        ["mnist_cnn_wall_ratio_vs_plain_loop", "mnist_cnn_ratios_by_backend"],
    ),
    (
        "sim_throughput_xeon_phases",
        "The same with pool and sequential and per-phase times, on the Xeon VM",
        ["mnist_cnn_wall_ratio_vs_plain_loop", "mnist_cnn_ratios_by_backend"],
    ),
    (
        "sim_throughput_amd_eval_driver",
        "The same with the pool evaluating in the driver (--eval-in-driver), on the AMD EPYC, "
        "2026-12-01 (docs/simulator.md, 'Evaluation in the workers')",
        ["mnist_cnn_wall_ratio_vs_plain_loop", "mnist_cnn_ratios_by_backend"],
    ),
    (
        "sim_throughput_amd_eval_workers",
        "The same with the pool evaluating in its workers (the default), right after",
        ["mnist_cnn_wall_ratio_vs_plain_loop", "mnist_cnn_ratios_by_backend"],
    ),
    (
        "sim_throughput_amd_avx2",
        "The same with pool and sequential on an AMD EPYC without AVX-512 (torch's kernels at "
        "AVX2), 2026-12-02, at commit 095d124's sdk (docs/simulator.md, 'On an AVX2-only AMD "
        "EPYC')",
        ["mnist_cnn_wall_ratio_vs_plain_loop", "mnist_cnn_ratios_by_backend"],
    ),
    (
        "sim_throughput_amd_avx2_unfold",
        "The same after `unfold_conv` (sdk/_conv.py), on the same machine, right after",
        ["mnist_cnn_wall_ratio_vs_plain_loop", "mnist_cnn_ratios_by_backend"],
    ),
    (
        "sim_throughput_amd_avx512_v1098",
        "The same with pool and sequential on a slower AVX-512 AMD EPYC, 2026-12-02 "
        "(docs/simulator.md, 'On a slower AVX-512 AMD EPYC')",
        ["mnist_cnn_wall_ratio_vs_plain_loop", "mnist_cnn_ratios_by_backend"],
    ),
    (
        "sim_throughput_amd_avx512_v1300",
        "The same with pool and sequential on another AVX-512 AMD EPYC, 2026-12-07 "
        "(docs/simulator.md, 'On a third AVX-512 AMD EPYC')",
        ["mnist_cnn_wall_ratio_vs_plain_loop", "mnist_cnn_ratios_by_backend"],
    ),
    (
        "sim_throughput_amd_avx512_v1300_quiet",
        "The same on the same machine, started quiet, 2026-12-07 (docs/simulator.md, 'On a "
        "third AVX-512 AMD EPYC')",
        ["mnist_cnn_wall_ratio_vs_plain_loop", "mnist_cnn_ratios_by_backend"],
    ),
    (
        "sim_throughput_amd_avx512_v1300_eval_driver",
        "The pool evaluating in the driver (--eval-in-driver) on the same machine, 2026-12-07 "
        "(docs/simulator.md, 'On a third AVX-512 AMD EPYC')",
        ["mnist_cnn_wall_ratio_vs_plain_loop", "mnist_cnn_ratios_by_backend"],
    ),
    (
        "sim_throughput_amd_avx512_v1300_eval_workers",
        "The pool evaluating in its workers (the default), right after",
        ["mnist_cnn_wall_ratio_vs_plain_loop", "mnist_cnn_ratios_by_backend"],
    ),
    (
        "device_round_rss",
        "Peak RSS of a device's whole round on plain onnxruntime, torch blocked (mnist_cnn, "
        "B=10: `Client.participate` against a loopback coordinator; docs/devices.md)",
        ["first_round_peak_rss_mib", "later_rounds_peak_rss_mib", "after_imports_mib"],
    ),
    (
        "readme_cnn_download/rounds",
        "README: a 1-round run of the compressed MNIST-CNN setting, for its download bytes",
        ["summary.final_accuracy", "summary.total_upload_bytes", "summary.total_download_bytes"],
    ),
    (
        "demo_http_mlp/rounds",
        "README: `make demo`'s run (its `plume sim` line with --out bench/results/demo_http_mlp)",
        ["summary.final_accuracy", "summary.total_upload_bytes", "summary.upload_ratio_vs_dense"],
    ),
    (
        "readme_http_mlp/rounds",
        "README: the MLP in the headline setting over HTTP, for its download bytes",
        [
            "summary.final_accuracy",
            "summary.total_upload_bytes",
            "summary.upload_ratio_vs_dense",
            "summary.total_download_bytes",
            "ledger_totals.down.ratio_vs_dense",
        ],
    ),
]


def _lookup(doc: dict[str, Any], key: str) -> Any:
    value: Any = doc
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _other_files() -> list[str]:
    """The OTHER_FILES: file, command, machine, date and the figures the README quotes."""
    out = [
        "## Other result files the README quotes",
        "",
        "Runs the README cites that have no section above; each with its command (as recorded, "
        "or the docs' command where the file records none), machine and date.",
        "",
    ]
    for stem, title, keys in OTHER_FILES:
        path = RESULTS / f"{stem}.json"
        if not path.exists():
            continue
        doc = json.loads(path.read_text())
        sections = doc.get("sections")
        command = _command(doc, stem)
        if isinstance(sections, dict) and command.startswith("each section"):
            # One measured section (the headline's) and its command.
            sec = sections.get(doc.get("mnist_cnn_from_section", ""), {})
            recorded = sec.get("command") if isinstance(sec, dict) else None
            if isinstance(recorded, str):
                command = f"`{_runnable(recorded)}` (its `{doc['mnist_cnn_from_section']}` section)"
        when = doc.get("date") or doc.get("finished_at") or "not recorded"
        figures = ", ".join(f"`{k}` {_figure(k, _lookup(doc, k))}" for k in keys)
        out += [
            f"- **{title}**: `bench/results/{stem}.json`. Command: {command}. Machine: "
            f"{_machine(doc)}. Date: {when}.{_code(doc)} {figures}.{_plain_arm(doc, stem)}",
        ]
    return out + [""]


def render() -> str:
    out = [
        "# Benchmark results",
        "",
        "Generated by `python bench/summarize.py` from `bench/results/`; every number below",
        "comes from a JSON a committed bench script (or, for the README's kept runs at the end,",
        "a `plume sim` command) wrote. Each section names the command:",
        "the one the file records, or, where the file records none, the one the docs give for",
        "it, marked as such. Speed figures were measured on a shared 2-core machine while other",
        "work ran, so compare the ratios (each against a baseline measured in the same run)",
        "rather than the absolute times. An accuracy baseline reused from an earlier run",
        "(bench/secagg.py --plain-from, bench/robustness.py --merge) is said so where shown.",
        "",
    ]
    for stem, title, command, keys in BENCHES:
        path = RESULTS / f"{stem}.json"
        out += [f"## {title}", ""]
        if not path.exists():
            out += [f"Not run yet: `{command}` writes `bench/results/{stem}.json`.", ""]
            continue
        doc = json.loads(path.read_text())
        if is_quick(doc, stem):
            raise QuickResults(
                f"bench/results/{stem}.json is from a --quick smoke run, not publishing it: "
                f"restore the file (git checkout -- bench/results/{stem}.json) or run `{command}`"
            )
        machine = f"Machine: {_machine(doc)}."
        when = f"Date: {doc.get('date', 'not recorded')}."
        sections = doc.get("sections")
        per_section: list[str] = []
        if isinstance(sections, dict) and sections:
            per_section = _sections_line(doc, sections)
            machine = f"Machine of the last section run: {_machine(doc)}."
            when = f"Date of the last section run: {doc.get('date', 'not recorded')}."
        out += [f"Command: {_command(doc, stem)}. {machine} {when}{_code(doc)}", "", *per_section]
        if keys:
            out += ["| metric | measured | target |", "|---|---|---|"]
            for key, target in keys:
                out.append(f"| `{key}` | {_figure(key, doc.get(key))} | {target} |")
            out.append("")
        if stem == "bandwidth_accuracy":
            out += _sweep_table()
        if stem == "robustness":
            out += _fraction_table()
        if stem in MATRIX_TABLES:
            out += _matrix_table(doc)
        if stem == "server_opt":
            out += _server_opt_table(doc)
        if stem == "partition":
            out += _partition_table(doc)
        out += _notes(doc)
        extra = [k for k in doc if k.startswith("accuracy_at_eps") or k == "accuracy_by_epsilon"]
        for k in extra:
            out += [f"`{k}`: {_fmt(doc[k])}", ""]
    out += _other_files()
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--check", action="store_true", help="fail if docs/benchmarks.md is stale")
    args = ap.parse_args(argv)
    try:
        text = render()
    except QuickResults as exc:
        print(f"summarize: {exc}", file=sys.stderr)
        return 1
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print("docs/benchmarks.md is stale: run python bench/summarize.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
