"""The operator's model export (`GET /v1/admin/tasks/{id}/model`, `AdminClient.model`, `plume
coordinator get-model`) and stop (`POST /v1/admin/tasks/{id}/stop`, `plume coordinator stop`)
on a loopback coordinator with SDK devices: the export is the model the devices hold (same
digest), older versions and other tokens are refused with a reason, a stop during an open
plain or secure round loses nothing, and every get-model format reads back the same tensors."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from compression import decode_snapshot, model_digest
from coordinator import _cli
from coordinator.service import AdminClient, AdminError, ServerThread, ServiceConfig, admin_client
from protocol.messages import Assignment, TensorShape
from sdk.client import Client, ClientError

from .test_service_support import (
    ADMIN,
    SPEC,
    SoftmaxTrainer,
    admin_get,
    await_assignment,
    create_task,
    device_client,
    initial_params,
    local_data,
    task_config,
    wait_until,
)

AUTH = {"authorization": f"Bearer {ADMIN}"}


@dataclass
class World:
    url: str
    root: Path
    http: httpx.Client

    def devices(self, n: int, prefix: str) -> list[Client]:
        """`n` registered devices, closed when the test ends (tests/coordinator/conftest.py)."""
        clients = [device_client(self.url, str(self.root / f"{prefix}{i}")) for i in range(n)]
        for c in clients:
            c.register()
        return clients


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02
    )
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        yield World(url, tmp_path, http)


def _threads(clients: list[Client], work: Callable[[int, Client], None]) -> None:
    """`work(i, client)` for every client at once (a round opens once its cohort checks in)."""
    errors: list[BaseException] = []

    def run(i: int, c: Client) -> None:
        try:
            work(i, c)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def _assign(clients: list[Client], task_id: int) -> dict[str, Assignment]:
    """Each client's assignment in the task's next round."""
    got: dict[str, Assignment] = {}
    _threads(clients, lambda i, c: got.update({c.device_id: await_assignment(c, task_id)}))
    return got


def _train(clients: list[Client], task_id: int, seed: int) -> None:
    """Each client trains and uploads once in the task's next round."""
    got = _assign(clients, task_id)
    _threads(
        clients,
        lambda i, c: c.train_round(got[c.device_id], SoftmaxTrainer(), *local_data(seed + i)),
    )


def _trained_task(world: World, rounds: int) -> tuple[int, list[Client]]:
    cfg = task_config(rounds=5, clients_per_round=2, deadline_s=60.0)
    task_id = create_task(world.http, cfg)
    clients = world.devices(2, "dev")
    for r in range(rounds):
        _train(clients, task_id, 10 * r)
        wait_until(world.http, f"/v1/admin/tasks/{task_id}", "version", r + 1)
    return task_id, clients


def test_the_export_is_the_model_the_devices_hold(world: World) -> None:
    # Prepare: two committed rounds
    task_id, clients = _trained_task(world, 2)
    status = admin_get(world.http, f"/v1/admin/tasks/{task_id}")
    # Execute
    response = world.http.get(f"/v1/admin/tasks/{task_id}/model", headers=AUTH)
    with AdminClient(world.url, ADMIN) as admin:
        exported = admin.model(task_id)
        pinned = admin.model(task_id, version=2)
    # Assert: an fp32 snapshot of version 2, with the digest a device computes for its model
    assert response.status_code == 200, response.text
    assert response.headers["x-plume-model-version"] == "2"
    assert response.headers["x-plume-model-digest"] == status["model_digest"]
    assert response.headers["x-plume-model-exact"] == "1"
    params = decode_snapshot(response.content, SPEC)
    held, version, _ = clients[0].fetch_current(task_id, SPEC)
    assert version == 2 and np.array_equal(held, params)
    assert model_digest(held).hex() == status["model_digest"] == exported.digest
    assert np.array_equal(exported.params, held) and exported.version == 2
    assert pinned.digest == exported.digest and pinned.snapshot == response.content


def test_older_unknown_and_unauthorised_exports_are_refused_with_a_reason(world: World) -> None:
    # Prepare
    task_id, _ = _trained_task(world, 2)
    path = f"/v1/admin/tasks/{task_id}/model"
    digest_v1 = admin_get(world.http, f"/v1/admin/tasks/{task_id}/rounds")[0]
    # Execute / Assert: a version published but no longer current is rebuilt from the initial
    # model the store keeps (its refusals: test_h93_initial_model)
    r = world.http.get(path, params={"version": 1}, headers=AUTH)
    assert r.status_code == 200 and r.headers["x-plume-model-version"] == "1", r.text
    assert digest_v1["version_after"] == 1
    # ... never published
    r = world.http.get(path, params={"version": 3}, headers=AUTH)
    assert r.status_code == 404 and r.json()["reason"] == "unknown_version", r.text
    r = world.http.get(path, params={"version": -1}, headers=AUTH)
    assert r.status_code == 422 and r.json()["reason"] == "validation"
    # ... no task, no model yet
    r = world.http.get(f"/v1/admin/tasks/{task_id + 9}/model", headers=AUTH)
    assert r.status_code == 404 and r.json()["reason"] == "unknown_task"
    created = world.http.post("/v1/admin/tasks", json=_json(task_config()), headers=AUTH)
    r = world.http.get(f"/v1/admin/tasks/{created.json()['task_id']}/model", headers=AUTH)
    assert r.status_code == 409 and r.json()["reason"] == "invalid_state"
    # ... without the admin token, and with another
    r = world.http.get(path)
    assert r.status_code == 401 and r.json()["reason"] == "bad_admin_token"
    r = world.http.get(path, headers={"authorization": "Bearer not-the-token"})
    assert r.status_code == 403 and r.json()["reason"] == "bad_admin_token"
    # ... the client says so too
    with AdminClient(world.url, ADMIN) as admin, pytest.raises(AdminError) as gone:
        admin.model(task_id, version=3)
    assert gone.value.status == 404
    with AdminClient(world.url, "wrong") as admin, pytest.raises(AdminError) as denied:
        admin.model(task_id)
    assert denied.value.status == 403


def _json(cfg: object) -> object:
    from protocol.messages import to_json

    return to_json(cfg)


def _bandwidth(world: World, round_id: int) -> object:
    return admin_get(world.http, f"/v1/rounds/{round_id}/bandwidth")


def test_a_stop_during_an_open_plain_round_loses_nothing(world: World) -> None:
    # Prepare: version 1, then a round of three whose first two reports are in
    cfg = task_config(rounds=5, clients_per_round=3, deadline_s=60.0)
    task_id = create_task(world.http, cfg)
    clients = world.devices(3, "p")
    _train(clients, task_id, 0)
    before = wait_until(world.http, f"/v1/admin/tasks/{task_id}", "version", 1)
    got = _assign(clients, task_id)
    for i, c in enumerate(clients[:2]):
        c.train_round(got[c.device_id], SoftmaxTrainer(), *local_data(100 + i))
    round_id = admin_get(world.http, f"/v1/admin/tasks/{task_id}")["current_round"]
    assert admin_get(world.http, f"/v1/rounds/{round_id}")["reports"] == 2
    ledger = _bandwidth(world, round_id)
    # Execute
    r = world.http.post(f"/v1/admin/tasks/{task_id}/stop", headers=AUTH)
    # Assert: stopped, the model version 1, the round abandoned with its reports and ledger
    assert r.status_code == 200, r.text
    after = r.json()
    assert after["state"] == "stopped" and after["current_round"] is None
    assert (after["version"], after["model_digest"]) == (1, before["model_digest"])
    rnd = admin_get(world.http, f"/v1/rounds/{round_id}")
    assert rnd["state"] == "abandoned" and rnd["reports"] == 2
    assert rnd["measurements"]["abandoned"] == "stopped by the operator"
    assert _bandwidth(world, round_id) == ledger
    # ... the third device is told the task is over, with the reason; the final model is
    # still served
    answer = clients[2].check_in(task_id)
    assert answer.action == "end" and "stopped by the operator" in answer.detail
    held, version, _ = clients[2].fetch_current(task_id, SPEC)
    assert version == 1 and model_digest(held).hex() == before["model_digest"]
    # ... stopping again answers the status; the task stays listed
    again = world.http.post(f"/v1/admin/tasks/{task_id}/stop", headers=AUTH)
    assert again.status_code == 200 and again.json() == after
    listed = admin_get(world.http, "/v1/admin/tasks")
    assert [t["state"] for t in listed if t["task_id"] == task_id] == ["stopped"]
    missing = world.http.post(f"/v1/admin/tasks/{task_id + 9}/stop", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["reason"] == "unknown_task"
    anonymous = world.http.post(f"/v1/admin/tasks/{task_id}/stop")
    assert anonymous.status_code == 401


def test_a_stop_during_an_open_secure_round_abandons_it(world: World) -> None:
    # Prepare: a secure task whose first round opened for three devices (its advertise-keys
    # stage, which no device uploads, must still be open at the stop: a long stage timeout)
    cfg = task_config(
        rounds=3,
        clients_per_round=3,
        min_reports=3,
        selection_timeout_s=60.0,
        secure={"coord_fraction": 0.5, "stage_timeout_s": 60.0},
    )
    task_id = create_task(world.http, cfg)
    clients = world.devices(3, "s")
    assignments = _assign(clients, task_id)
    assert len(assignments) == 3
    before = admin_get(world.http, f"/v1/admin/tasks/{task_id}")
    round_id = before["current_round"]
    # Execute
    with AdminClient(world.url, ADMIN) as admin:
        status = admin.stop(task_id)
    # Assert
    assert status.state == "stopped" and status.current_round is None
    assert (status.version, status.model_digest) == (0, before["model_digest"])
    rnd = admin_get(world.http, f"/v1/rounds/{round_id}")
    assert rnd["state"] == "abandoned"
    assert rnd["measurements"]["abandoned"] == "stopped by the operator"
    # ... its stage requests are refused with the reason
    c = clients[0]
    with pytest.raises(ClientError) as refused:
        c.secure_round(
            assignments[c.device_id],
            lambda params: (np.zeros(SPEC.size, np.float32), 1, 0.0),
        )
    assert refused.value.status == 409 and refused.value.reason == "task_refused"


# -- the CLI -------------------------------------------------------------------------------


def _cli_run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    _cli.register(parser.add_subparsers())
    args = parser.parse_args(["coordinator", *argv])
    code: int = args.func(args)
    return code


def _zoo_task(world: World, seed: int) -> int:
    """A task of the zoo's digits_mlp with the initial weights of `seed`, its task seed too."""
    from mobile_sim.models import build_model
    from sdk.flat import get_flat_params, spec_from_module

    model = build_model("digits_mlp", seed=seed)
    spec = spec_from_module(model)
    cfg = replace(
        task_config(clients_per_round=1, seed=seed),  # the task seed: as create-task sets it
        model_name="digits_mlp",
        spec=[TensorShape(e.name, list(e.shape)) for e in spec.entries],
    )
    with AdminClient(world.url, ADMIN) as admin:
        return admin.create_task(cfg, get_flat_params(model))


@pytest.mark.parametrize("fmt", ["snapshot", "pt", "npz"])
def test_get_model_writes_each_format_and_it_reads_back_the_same_tensors(
    world: World, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import torch

    from mobile_sim.models import build_model
    from sdk.flat import get_flat_params, spec_from_module

    # Prepare
    task_id = _zoo_task(world, seed=3)
    with AdminClient(world.url, ADMIN) as admin:
        exported = admin.model(task_id)
    out = world.root / f"model.{fmt}"
    # Execute
    code = _cli_run(
        "get-model", "--url", world.url, "--admin-token", ADMIN, "--task", str(task_id),
        "--out", str(out), "--format", fmt,
    )  # fmt: skip
    # Assert
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["digest"] == exported.digest and printed["format"] == fmt
    assert printed["bytes"] == out.stat().st_size
    assert [p.name for p in world.root.iterdir() if p.name.endswith(".tmp")] == []
    names = [e.name for e in exported.spec.entries]
    if fmt == "snapshot":
        got = decode_snapshot(out.read_bytes(), exported.spec)
        assert np.array_equal(got, exported.params)
    elif fmt == "npz":
        with np.load(out, allow_pickle=False) as z:
            assert sorted(z.files) == sorted(names)
            for name, array in exported.arrays().items():
                assert z[name].dtype == np.float32 and np.array_equal(z[name], array)
    else:
        state = torch.load(out, weights_only=True)
        model = build_model("digits_mlp", seed=99)  # other weights, overwritten by the load
        model.load_state_dict(state, strict=True)
        assert spec_from_module(model).entries == exported.spec.entries
        assert np.array_equal(get_flat_params(model), exported.params)
        assert model_digest(get_flat_params(model)).hex() == exported.digest


def test_get_model_refuses_pt_for_a_task_outside_the_zoo_and_writes_nothing(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    task_id = create_task(world.http)  # model_name "softmax"
    out = world.root / "m.pt"
    with pytest.raises(SystemExit) as exited:
        _cli_run(
            "get-model", "--url", world.url, "--admin-token", ADMIN, "--task", str(task_id),
            "--out", str(out),
        )  # fmt: skip
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "'softmax' is not a zoo model" in err and "--format npz" in err
    assert list(world.root.glob("m.pt*")) == [] and list(world.root.glob(".m.pt*")) == []


def test_the_stop_cli_stops_the_task(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    task_id = create_task(world.http)
    code = _cli_run("stop", "--url", world.url, "--admin-token", ADMIN, "--task", str(task_id))
    assert code == 0
    assert json.loads(capsys.readouterr().out)["state"] == "stopped"
    assert admin_get(world.http, f"/v1/admin/tasks/{task_id}")["state"] == "stopped"


# -- older versions: rebuilt from the initial model and the stored delta frames ----------------


def _history(world: World, rounds: int, **over: Any) -> tuple[int, dict[int, np.ndarray]]:
    """A task run for `rounds` committed rounds: (task, version -> the model a device held)."""
    cfg = task_config(rounds=rounds + 2, clients_per_round=2, deadline_s=60.0, **over)
    task_id = create_task(world.http, cfg)
    clients = world.devices(2, "h")
    held = {0: initial_params()}
    for r in range(rounds):
        _train(clients, task_id, 10 * r)
        wait_until(world.http, f"/v1/admin/tasks/{task_id}", "version", r + 1)
        params, version, _ = clients[0].fetch_current(task_id, SPEC)
        assert version == r + 1
        held[version] = params
    return task_id, held


def test_an_older_version_is_rebuilt_bit_for_bit_from_the_initial_model(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: three versions, each as a device held it
    task_id, held = _history(world, 3)
    # Execute: every version, in one chain request and in steps of one version
    with AdminClient(world.url, ADMIN) as admin:
        rebuilt = {v: admin.rebuild(task_id, v, initial_params()) for v in range(4)}
        monkeypatch.setattr(admin_client, "REBUILD_STEP", 1)
        stepped = admin.rebuild(task_id, 3, initial_params())
        from_one = admin.rebuild(task_id, 3, held[1], base_version=1)
    # Assert
    for v, got in rebuilt.items():
        assert got.version == v and np.array_equal(got.params, held[v]), v
        assert got.digest == model_digest(held[v]).hex()
        assert np.array_equal(decode_snapshot(got.snapshot, SPEC), held[v])
    assert np.array_equal(stepped.params, held[3]) and np.array_equal(from_one.params, held[3])


def test_a_rebuild_from_a_wrong_initial_model_or_a_pruned_chain_is_refused(
    tmp_path: Path,
) -> None:
    # Prepare: every frame older than the newest version emptied (--keep-frames 0, max_chain 1)
    cfg = ServiceConfig(
        db_path=str(tmp_path / "k.db"), admin_token=ADMIN, poll_s=0.05, keep_frames_rounds=0
    )
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        world = World(url, tmp_path, http)
        task_id, held = _history(world, 3, max_chain=1)
        path = f"/v1/admin/tasks/{task_id}/model"
        with AdminClient(url, ADMIN) as admin:
            # Execute / Assert: version 2 needs the emptied frame of version 1 (or 2)
            with pytest.raises(AdminError) as pruned:
                admin.rebuild(task_id, 2, initial_params())
            assert pruned.value.status == 410 and "version_gone" in pruned.value.body
            assert "--keep-frames" in pruned.value.body
            # ... the newest frame is still there: version 3 from the device's version 2
            assert np.array_equal(admin.rebuild(task_id, 3, held[2], 2).params, held[3])
            # ... and a base that is not the version it names is caught before anything is kept
            wrong = initial_params() + np.float32(1e-3)
            with pytest.raises(AdminError) as mismatch:
                admin.rebuild(task_id, 3, wrong, 2)
            assert "the base model given is not version 2" in mismatch.value.problem
        # ... the chain answer itself: headers naming both versions, the bounds checked
        r = http.get(path, params={"version": 3, "base": 2}, headers=AUTH)
        assert r.status_code == 200 and r.headers["x-plume-model-encoding"] == "delta-chain"
        assert r.headers["x-plume-model-base-version"] == "2"
        assert r.headers["x-plume-model-base-digest"] == model_digest(held[2]).hex()
        assert r.headers["x-plume-model-digest"] == model_digest(held[3]).hex()
        r = http.get(path, params={"version": 1, "base": 2}, headers=AUTH)
        assert r.status_code == 422 and r.json()["reason"] == "validation"
        r = http.get(path, params={"version": 9, "base": 0}, headers=AUTH)
        assert r.status_code == 404 and r.json()["reason"] == "unknown_version"


@pytest.mark.parametrize("suffix", [".npz", ".snap"])
def test_get_model_rebuilds_an_older_version_from_initial(
    world: World, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    import json

    # Prepare: the initial model exported while it is current, then two rounds
    cfg = task_config(rounds=4, clients_per_round=2, deadline_s=60.0)
    task_id = create_task(world.http, cfg)
    v0 = world.root / f"v0{suffix}"
    flags = ["--url", world.url, "--admin-token", ADMIN, "--task", str(task_id)]
    assert _cli_run("get-model", *flags, "--out", str(v0)) == 0
    clients = world.devices(2, "g")
    _train(clients, task_id, 0)
    wait_until(world.http, f"/v1/admin/tasks/{task_id}", "version", 1)
    v1, _, _ = clients[0].fetch_current(task_id, SPEC)
    _train(clients, task_id, 10)
    wait_until(world.http, f"/v1/admin/tasks/{task_id}", "version", 2)
    capsys.readouterr()
    # Execute
    out = world.root / "v1.snap"
    code = _cli_run("get-model", *flags, "--out", str(out), "--version", "1", "--initial", str(v0))
    # Assert
    assert code == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1
    assert np.array_equal(decode_snapshot(out.read_bytes(), SPEC), v1)
    # ... without --initial, the coordinator rebuilds it from the initial model it keeps (a
    # task stored before schema 4 is told to pass --initial: test_h93_initial_model)
    other = world.root / "v0-again.snap"
    assert _cli_run("get-model", *flags, "--out", str(other), "--version", "0") == 0
    assert np.array_equal(decode_snapshot(other.read_bytes(), SPEC), initial_params())


def test_get_model_rebuilds_a_zoo_task_from_its_seeded_initial_weights(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from mobile_sim.models import build_model
    from sdk.flat import spec_from_module

    # Prepare: a zoo task (initial weights and task seed 3, as create-task makes them), its
    # version 0 saved as a state_dict, then moved to version 1 by one device's upload
    task_id = _zoo_task(world, seed=3)
    spec = spec_from_module(build_model("digits_mlp", seed=3))
    flags = ["--url", world.url, "--admin-token", ADMIN, "--task", str(task_id)]
    v0_pt = world.root / "v0.pt"
    assert _cli_run("get-model", *flags, "--out", str(v0_pt)) == 0
    device = world.devices(1, "z")[0]
    a = await_assignment(device, task_id)
    params, _ = device.fetch_model(a)
    pending = device.encode_update(a, params, params + np.float32(0.01), 10)
    device.upload(pending, spec)
    wait_until(world.http, f"/v1/admin/tasks/{task_id}", "version", 1)
    capsys.readouterr()
    for initial in ([], ["--initial", str(v0_pt)]):
        out = world.root / "v0.npz"
        # Execute: version 0, no longer current, from the zoo's weights or the saved file
        assert _cli_run("get-model", *flags, "--out", str(out), "--version", "0", *initial) == 0
        # Assert: the initial weights, checked against version 0's digest
        assert json.loads(capsys.readouterr().out)["digest"] == model_digest(params).hex()
        with np.load(out, allow_pickle=False) as z:
            flat = np.concatenate([z[e.name].reshape(-1) for e in spec.entries])
        assert np.array_equal(flat, params)
        out.unlink()
    # ... an --initial file that does not load is one error line, nothing written
    broken = world.root / "broken.pt"
    broken.write_bytes(b"not a state_dict")
    with pytest.raises(SystemExit):
        _cli_run("get-model", *flags, "--out", str(out), "--version", "0", "--initial", str(broken))
    err = capsys.readouterr().err
    assert "cannot read --initial" in err and "Traceback" not in err
    assert not out.exists()
