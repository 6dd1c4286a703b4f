"""docs/operations.md's tables read mechanically against the code (stop 57, audit F): the serve
flag table against serve's parser and `ServiceConfig`, the configuration file's kinds of keys
against the parser's types, the persistence table against the store's schema and pragmas, and
the metric table against what a real coordinator exposes after a round (names both ways, type,
labels and listed label values)."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from coordinator._cli import _INTEGER_TYPES
from coordinator.cli import build_parser
from coordinator.service import ServiceConfig
from coordinator.service.metrics import Metrics
from coordinator.service.store import SCHEMA_VERSION, Store

from ._secure_service import fast_service
from .test_service_support import (
    SPEC,
    await_assignment,
    create_task,
    device_client,
    send_signed,
    task_config,
    wait_until,
)

DOC = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
PROSE = " ".join(DOC.split())


def _table(header: str) -> list[list[str]]:
    """The cells of each row of the doc's table whose header row is `header`."""
    lines = DOC.splitlines()
    assert header in lines, f"the table `{header}` is gone"
    rows = []
    for line in lines[lines.index(header) + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def _serve_parser() -> argparse.ArgumentParser:
    parsers = [build_parser()]
    while parsers:
        parser = parsers.pop()
        if parser.prog.endswith("coordinator serve"):
            return parser
        for action in parser._actions:
            if isinstance(getattr(action, "choices", None), dict):
                parsers.extend(action.choices.values())  # type: ignore[union-attr]
    raise AssertionError("no `plume coordinator serve` parser")


def _serve_actions() -> dict[str, argparse.Action]:
    return {
        option: action
        for action in _serve_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and action.dest != "help"
    }


# --- the serve flag table ---------------------------------------------------------------------

FLAG_ROWS = _table("| flag | default | meaning |")


def _flag_cells() -> list[tuple[list[str], str, str]]:
    """(flags, ServiceConfig field in parentheses or "", default cell) of each row."""
    out = []
    for row in FLAG_ROWS:
        flags = re.findall(r"`(--[a-z-]+)`", row[0])
        field = re.search(r"\(`([a-z_]+)`", row[0])
        out.append((flags, field.group(1) if field else "", row[1]))
    return out


def test_the_flag_table_lists_every_serve_flag_once() -> None:
    # "`plume coordinator serve` flags (and the matching `ServiceConfig` fields):" the table
    listed = [flag for flags, _, _ in _flag_cells() for flag in flags]
    assert len(listed) == len(set(listed)), listed
    assert set(listed) == set(_serve_actions())


def test_the_fields_the_flag_table_names_have_the_flags_defaults() -> None:
    # "(`register_rate_per_s`)", "(`upload_buffer_bytes`, in bytes)": each named field exists
    # and its default is the flag's (the MiB flag's in bytes)
    actions = _serve_actions()
    defaults = {f.name: f.default for f in dataclasses.fields(ServiceConfig)}
    named = [(flags[0], field) for flags, field, _ in _flag_cells() if field]
    assert len(named) >= 7, named
    for flag, field in named:
        assert field in defaults, f"{flag}: ServiceConfig has no field {field}"
        default = actions[flag].default
        if field == "upload_buffer_bytes":
            assert "in bytes" in " ".join(r[0] for r in FLAG_ROWS if flag in r[0])
            default = default << 20
        assert defaults[field] == default, (flag, field, defaults[field], default)


def test_every_flag_default_cell_is_the_parsers_default() -> None:
    # tests/test_docs_examples.py compares the cells that read as values; here every cell is
    # either one or one of the few prose defaults, which are checked for what they say
    actions = _serve_actions()
    checked = 0
    for flags, _, cell in _flag_cells():
        values = [v.strip().strip("`") for v in re.sub(r"\s*\([^)]*\)", "", cell).split(",")]
        if len(values) != len(flags):
            values = values * len(flags) if len(values) == 1 else values
        for flag, value in zip(flags, values, strict=True):
            real = actions[flag].default
            if value == "none":
                assert real is None, (flag, real)
            elif value == "$PLUME_ADMIN_TOKEN":
                assert "PLUME_ADMIN_TOKEN" in (actions[flag].help or ""), flag
                continue
            elif value in ("on", "off"):
                assert real is (value == "on"), (flag, real)
            elif isinstance(real, str):
                assert value == real, (flag, value, real)
            else:
                assert float(value) == float(real), (flag, value, real)
            checked += 1
    assert checked == len(_serve_actions()) - 1  # all but --admin-token


def test_the_flags_env_default_is_read_from_plume_admin_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "`--admin-token` | `$PLUME_ADMIN_TOKEN`": the parser's default is the variable's value
    monkeypatch.setenv("PLUME_ADMIN_TOKEN", "from-the-environment")
    assert _serve_actions()["--admin-token"].default == "from-the-environment"
    monkeypatch.delenv("PLUME_ADMIN_TOKEN")
    assert _serve_actions()["--admin-token"].default is None


# --- the configuration file's kinds of keys ---------------------------------------------------


def test_the_whole_number_keys_are_the_integer_flags() -> None:
    # "a whole-number flag (`port`, `register-burst`, `keep-frames`, `snapshots-per-version`,
    # `upload-buffer-mb`) a TOML integer"
    said = re.search(r"a whole-number flag \(([^)]*)\) a TOML integer", PROSE)
    assert said is not None, "the sentence on whole-number keys moved"
    listed = set(re.findall(r"`([a-z-]+)`", said.group(1)))
    integer = {f[2:] for f, a in _serve_actions().items() if a.type in _INTEGER_TYPES}
    assert listed == integer


def test_the_text_keys_are_the_flags_without_a_type() -> None:
    # "a flag that takes text (`host`, `db`, `admin-token`, `log-level`, the TLS files) takes
    # only a quoted string"; "an on/off flag (`access-log`)"
    said = re.search(r"a flag that takes text \(([^)]*)\) takes only a quoted string", PROSE)
    assert said is not None, "the sentence on text keys moved"
    listed = set(re.findall(r"`([a-z-]+)`", said.group(1))) | {"tls-cert", "tls-key"}
    assert "the TLS files" in said.group(1)
    text = {f[2:] for f, a in _serve_actions().items() if a.type in (None, str)} - {"config"}
    assert listed == text
    on_off = {f[2:] for f, a in _serve_actions().items() if "on,off" in (a.metavar or "")}
    assert on_off == {"access-log"}


# --- persistence: the tables, their columns, the pragmas ---------------------------------------


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "plume.db")
    yield s
    s.close()


def _schema(db: sqlite3.Connection) -> dict[str, set[str]]:
    names = [
        r[0]
        for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        if not r[0].startswith("sqlite_")
    ]
    return {t: {r[1] for r in db.execute(f"PRAGMA table_info({t})")} for t in names}


def test_the_persistence_table_is_the_schema(store: Store) -> None:
    # "It holds:" the table of tables; `meta` holds the rows the doc names in the text
    listed = {r[0].strip("`") for r in _table("| table | rows |")}
    schema = _schema(store._db)
    assert listed | {"meta"} == set(schema)
    grows = {r[0].strip("`") for r in _table("| table | grows by, per round |")}
    assert grows <= listed


def test_the_columns_the_doc_names_exist(store: Store) -> None:
    # `updates.pruned_sha256`, `pruned_len`, `versions.params`, `updates.train_loss`, the
    # `agg_state` column, `config_json`, `selected_json`, `measurements_json`
    schema = _schema(store._db)
    dotted = set(re.findall(r"`([a-z]+)\.([a-z_0-9]+)`", DOC))
    dotted = {(t, c) for t, c in dotted if t in schema}
    assert len(dotted) >= 3, dotted
    for table, column in dotted:
        assert column in schema[table], f"{table}.{column}"
    columns = set().union(*schema.values())
    for column in ("agg_state", "config_json", "selected_json", "pruned_len", "pruned_sha256"):
        assert re.search(rf"\b{column}\b", DOC), column
        assert column in columns, column


def test_the_pragmas_the_doc_gives(store: Store) -> None:
    # "WAL mode (`PRAGMA journal_mode=WAL`, `synchronous=NORMAL` ...)", "the store runs with
    # `PRAGMA secure_delete=ON`", "SQLite's 5 s busy timeout"
    assert "`PRAGMA journal_mode=WAL`, `synchronous=NORMAL`" in PROSE
    assert "`PRAGMA secure_delete=ON`" in PROSE
    assert "the 5 s busy timeout" in PROSE
    db = store._db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.journal_mode == "wal"  # what /healthz says
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert db.execute("PRAGMA secure_delete").fetchone()[0] == 1
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_the_schema_version_and_meta_rows(store: Store) -> None:
    # "A database once opened by this version has schema version 5"; "the `meta` row
    # `incarnation`, 32 random hex digits"; "(`tests/...`) `schema_version` row"
    assert "has schema version 5," in PROSE and SCHEMA_VERSION == 5
    meta = dict(store._db.execute("SELECT key, value FROM meta"))
    assert meta["schema_version"] == "5"
    assert re.fullmatch(r"[0-9a-f]{32}", meta["incarnation"])


# --- the metric table, against a real coordinator after a round -------------------------------

METRIC_ROWS = _table("| metric | labels | meaning |")


def _documented() -> dict[str, tuple[set[str], dict[str, set[str]], str]]:
    """metric -> (labels, {label: listed values}, meaning) of the metric table."""
    out = {}
    for name_cell, label_cell, meaning in METRIC_ROWS:
        labels = set(re.findall(r"`([a-z_]+)`", label_cell))
        values = {
            label: set(listed.split("/"))
            for label, listed in re.findall(r"`([a-z_]+)` \(([a-z_]+(?:/[a-z_]+)+)\)", label_cell)
        }
        for name in re.findall(r"`(plume_[a-z_]+)`", name_cell):
            out[name] = (labels, values, meaning)
    return out


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> str:
    """/metrics of a loopback coordinator after one committed round of one update."""
    root = tmp_path_factory.mktemp("metrics")
    with fast_service(root / "plume.db") as url, httpx.Client(base_url=url) as http:
        task = create_task(http, task_config(rounds=2, clients_per_round=1))
        device = device_client(url, str(root / "dev"))
        device.register()
        a = await_assignment(device, task)
        delta = np.random.default_rng(0).normal(0, 0.01, SPEC.size).astype(np.float32)
        frame = device.encode_update(a, np.zeros(SPEC.size, np.float32), delta, 40).frame
        r = send_signed(
            http,
            device,
            "POST",
            a.upload_path + "?train_loss=0.5",
            a.round_id,
            body=frame,
            headers={
                "content-type": "application/octet-stream",
                "idempotency-key": uuid.uuid4().hex,
            },
        )
        assert r.status_code == 200, r.text
        assert wait_until(http, f"/v1/rounds/{a.round_id}", "state", "committed")["state"] == (
            "committed"
        )
        text = http.get("/metrics").text
        device.close()
    return text + f"\n# frame {len(frame)}\n"


def _exposed(text: str) -> dict[str, tuple[str, set[str], dict[str, set[str]]]]:
    """family (a counter with its `_total`) -> (type, labels, {label: values}) of a scrape."""
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if not name.endswith("_created"):  # prometheus_client's creation-time gauges
                types[name] = kind
    families = {}
    for name, kind in types.items():
        family = f"{name}_total" if kind == "counter" and not name.endswith("_total") else name
        suffixes = ("_bucket", "_count", "_sum") if kind == "histogram" else ("",)
        stem = name[: -len("_total")] if name.endswith("_total") else name
        sample_names = {stem + s for s in suffixes} | {f"{stem}_total"} | {name}
        labels: set[str] = set()
        values: dict[str, set[str]] = {}
        for line in text.splitlines():
            m = re.match(r"([a-z_]+)(?:\{(.*)\})? \S+$", line)
            if m is None or line.startswith("#") or m.group(1) not in sample_names:
                continue
            for label, value in re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""):
                if label != "le":
                    labels.add(label)
                    values.setdefault(label, set()).add(value)
        families[family] = (kind, labels, values)
    return families


def _label_names_in_code() -> dict[str, set[str]]:
    """The label names of the service's own families (for those with no series yet)."""
    out = {}
    for metric in vars(Metrics()).values():
        names = getattr(metric, "_labelnames", None)
        if names is not None:
            kind = getattr(metric, "_type", "")
            out[metric._name + ("_total" if kind == "counter" else "")] = set(names)
    return out


def test_the_metric_table_names_every_family_exposed_and_no_other(scrape: str) -> None:
    documented, exposed = _documented(), _exposed(scrape)
    assert len(documented) > 40
    assert set(exposed) - set(documented) == set(), "exposed, not in the table"
    assert set(documented) - set(exposed) == set(), "in the table, not exposed"


def test_each_metrics_type_is_the_tables(scrape: str) -> None:
    # counters end in `_total` ("The counters (`_total`) count from the process's start"),
    # histograms are said to be ("histogram: ..."), the rest are gauges
    documented = _documented()
    for name, (kind, _, _) in _exposed(scrape).items():
        meaning = documented[name][2]
        if kind == "histogram":
            assert meaning.startswith("histogram:"), name
        else:
            assert not meaning.startswith("histogram"), name
            assert (kind == "counter") == name.endswith("_total"), (name, kind)


def test_each_metrics_labels_are_the_tables(scrape: str) -> None:
    documented, code = _documented(), _label_names_in_code()
    compared = 0
    for name, (_, labels, _) in _exposed(scrape).items():
        real = labels or code.get(name, set())
        assert documented[name][0] == real, (name, documented[name][0], real)
        compared += bool(real)
    assert compared >= 25


def test_the_label_values_the_table_lists_are_the_series(scrape: str) -> None:
    # `direction` (up/down), `kind` (payload/wire/dense), `outcome` (committed/abandoned),
    # `action` (train/wait/end), `reason` (norm/norm_ratio/cosine), `stat` (median/mean)
    exposed = _exposed(scrape)
    compared = 0
    for name, (_, listed, _) in _documented().items():
        for label, values in listed.items():
            assert exposed[name][2].get(label) == values, (name, label, exposed[name][2])
            compared += 1
    assert compared >= 6


def _value(scrape: str, series: str) -> float:
    for line in scrape.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no series {series}")


def test_what_one_round_of_one_update_moves(scrape: str) -> None:
    # The table's meanings, for one committed round of one 1-report plain task
    frame = int(re.search(r"# frame (\d+)", scrape).group(1))  # type: ignore[union-attr]
    assert _value(scrape, 'plume_rounds_total{outcome="committed"}') == 1
    assert _value(scrape, 'plume_rounds_total{outcome="abandoned"}') == 0
    assert _value(scrape, "plume_updates_accepted_total") == 1
    assert _value(scrape, 'plume_model_version{task="1"}') == 1
    assert _value(scrape, "plume_registered_devices") == 1
    assert _value(scrape, "plume_stored_frame_bytes") == frame
    assert _value(scrape, 'plume_bytes_total{direction="up",kind="payload"}') == frame
    assert _value(scrape, "plume_upload_seconds_count") == 1
    assert _value(scrape, "plume_aggregate_seconds_count") == 1
    assert _value(scrape, 'plume_check_ins_total{action="train"}') >= 1
    assert _value(scrape, 'plume_round_train_loss{stat="median",task="1"}') == 0.5
    assert _value(scrape, "plume_upload_buffer_limit_bytes") == 256 << 20
    assert _value(scrape, "plume_tasks_refused") == 0
    assert _value(scrape, "plume_store_errors_total") == 0
