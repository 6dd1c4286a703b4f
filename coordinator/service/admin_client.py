"""A small client for the admin API (create a task with its initial model, status, list, pause)."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from compression import ModelSpec, encode_snapshot
from protocol.messages import RoundStatus, TaskConfig, TaskStatus, from_json, to_json
from protocol.names import Path

__all__ = ["AdminClient", "AdminError"]


class AdminError(RuntimeError):
    """The coordinator refused an admin request (status and its JSON reason)."""


class AdminClient:
    """`AdminClient(url, token)`; `transport` is the same httpx seam as the device SDK's."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        transport: httpx.BaseTransport | None = None,
        verify: bool | str = True,
        timeout: float = 60.0,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url,
            transport=transport,
            verify=verify,
            timeout=timeout,
            headers={"authorization": f"Bearer {token}"},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, r: httpx.Response) -> Any:
        """The JSON body of a 2xx answer; `AdminError` "METHOD PATH: STATUS BODY" otherwise,
        and for a 2xx whose body is not JSON (another server at the URL)."""
        if r.status_code >= 400:
            raise AdminError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text}")
        try:
            return r.json()
        except ValueError:  # JSONDecodeError, or bytes that are not text
            raise AdminError(
                f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text}"
            ) from None

    def create_task(self, config: TaskConfig, params: npt.NDArray[np.float32]) -> int:
        """Create the task and upload its initial model (an fp32 snapshot); returns its id."""
        spec = ModelSpec.from_json([{"name": t.name, "shape": list(t.shape)} for t in config.spec])
        created = self._check(self._http.post(Path.ADMIN_TASKS, json=to_json(config)))
        task_id = int(created["task_id"])
        snapshot = encode_snapshot(np.asarray(params, dtype=np.float32), spec, "fp32")
        self._check(
            self._http.put(
                Path.ADMIN_TASK_MODEL.format(task_id=task_id),
                content=snapshot,
                headers={"content-type": "application/octet-stream"},
            )
        )
        return task_id

    def status(self, task_id: int) -> TaskStatus:
        data = self._check(self._http.get(Path.ADMIN_TASK.format(task_id=task_id)))
        result: TaskStatus = from_json(TaskStatus, data)
        return result

    def tasks(self) -> list[TaskStatus]:
        """Every task in the store; a refused one has state "refused" and `refused` (why)."""
        data = self._check(self._http.get(Path.ADMIN_TASKS))
        return [from_json(TaskStatus, t) for t in data]

    def rounds(self, task_id: int) -> list[RoundStatus]:
        data = self._check(self._http.get(Path.ADMIN_ROUNDS.format(task_id=task_id)))
        return [from_json(RoundStatus, r) for r in data]

    def round(self, round_id: int) -> RoundStatus:
        """One round's status (for a secure round in flight: its stage and stage uploads)."""
        data = self._check(self._http.get(Path.ROUND.format(round_id=round_id)))
        result: RoundStatus = from_json(RoundStatus, data)
        return result

    def pause(self, task_id: int) -> TaskStatus:
        data = self._check(self._http.post(Path.ADMIN_PAUSE.format(task_id=task_id)))
        result: TaskStatus = from_json(TaskStatus, data)
        return result

    def resume(self, task_id: int) -> TaskStatus:
        data = self._check(self._http.post(Path.ADMIN_RESUME.format(task_id=task_id)))
        result: TaskStatus = from_json(TaskStatus, data)
        return result

    def bandwidth(self, round_id: int) -> dict[str, Any]:
        data: dict[str, Any] = self._check(self._http.get(Path.BANDWIDTH.format(round_id=round_id)))
        return data
