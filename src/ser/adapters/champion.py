"""Who serves: the ``champion`` alias of the MLflow registry, moved by one gate.

The record
    The registry alias ``champion`` of a registered model (``ser-english``,
    ``ser-greek`` ...) is THE record of who the champion is. Nothing else decides:
    :func:`gate` is the only code that moves the alias, and the S3 copy a serving
    image pulls (``s3://BUCKET/NAME/champion/``, KServe's storageUri, plus the small
    pointer ``NAME/registry/champion.json`` saying which registry version it holds)
    is derived from the alias by :func:`sync_serving_copy`, never read to decide.

The gate
    :func:`gate` asks ``score(champion_version)`` for the current champion's metric
    (macro F1) on the candidate's own held-out rows; the candidate is promoted only
    when its value is strictly better (a tie keeps the champion), or when there is no
    champion yet. A champion that cannot be scored on those rows (other labels, image
    size or feature spec: ``score`` returns :class:`Score` with ``why``) keeps its
    place. The verdict is recorded as ``promotion.*`` tags on the candidate version
    (decision, reason, metric, both values, the champion's version, attempts, time);
    a champion that is displaced gets ``promotion.superseded_by``.

Compare-and-set
    MLflow has no atomic "set the alias if it still points at X". The gate makes one:

    1. read the champion alias (version C) and score C on the candidate's rows,
       outside any lock (loading and scoring a model takes seconds to minutes);
    2. take the registry's promotion lock of NAME (:class:`PromotionLock`);
    3. under the lock, read the alias again: if it still is C, decide, write the
       tags, set the alias (or not), release. If it moved (another retraining won
       meanwhile), release, score the new champion and go back to 2 -- at most
       ``attempts`` times; a candidate that never gets a stable champion keeps out
       (decision "kept champion", reason says so).

    Every writer of the alias goes through the lock and re-reads under it, so the
    check and the set are one step: two candidates finishing at once cannot both be
    champion, and the loser cannot overwrite a better winner -- it is compared with
    the winner and loses (or wins: then it really is better).

The lock
    The tracking server's database is the only thing all writers share, so the lock
    lives there, as a ticket lock on a helper registered model ``NAME.promotion-lock``
    (created on first use; not a model, its description says so):

    - acquire: ``create_model_version`` on it. The server gives each new version the
      next number inside a database transaction (a primary key: two concurrent
      creations cannot get the same number, and a higher number is only handed out
      once the lower one is committed); deleted versions are soft-deleted, so numbers
      are never reused. The holder is the caller whose ticket is the LOWEST live one;
      the others poll (``search_model_versions``) until every lower ticket is gone.
    - release: ``delete_model_version`` of one's own ticket, always (``finally``).
    - a crashed holder: a lower ticket older than ``stale_after`` seconds (measured
      on the server's clock: creation timestamps, plus the time waited here, so no
      clock skew matters) is deleted by a waiter. Deleting names one ticket by its
      number, so two waiters breaking the same stale ticket both succeed harmlessly
      and can never delete a newer holder's ticket (the ABA problem of a lock by name).
    - fencing: just before setting the alias, the holder checks its ticket is still
      live; a holder paused for longer than ``stale_after`` (minutes; the work under
      the lock takes a few requests) finds its ticket broken and starts over. As with
      any lease, a pause between that check and the alias write could still slip
      through; ``stale_after`` is set far above the few requests the lock protects.

Without MLflow there is no record, hence no champion: pipeline steps then archive a
model as a version only and leave the S3 serving copy as it is (see
:func:`ser.kubeflow.tasks.compare_with_champion`).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

CHAMPION = "champion"
LOCK_SUFFIX = ".promotion-lock"
#: The S3 pointer, outside ``NAME/champion/`` (KServe copies that whole prefix).
POINTER = "registry/champion.json"
SERVING_PREFIX = "champion"
PROMOTED, KEPT = "promoted", "kept champion"


class ChampionError(RuntimeError):
    """The gate or the serving copy could not do its job, and why."""


class PromotionLockTimeout(ChampionError):
    """The promotion lock stayed taken for longer than the wait allowed."""


@dataclass(frozen=True)
class Score:
    """The champion's metric on the candidate's rows; ``value`` None with ``why`` when it
    cannot be scored there. ``how`` ("on the same 120 test rows") goes into the reason;
    ``note`` is a caveat worth keeping (a tag ``promotion.note``)."""

    value: float | None
    why: str = ""
    how: str = ""
    note: str = ""


@dataclass
class Verdict:
    """What :func:`gate` decided for one candidate version."""

    name: str
    version: str
    promoted: bool
    candidate: float
    champion_version: str | None
    champion: float | None
    reason: str
    metric: str = "macro_f1"
    attempts: int = 1
    note: str = ""
    moved: list[str] = field(default_factory=list)  # champions that changed under this candidate while it was scored

    @property
    def decision(self) -> str:
        return PROMOTED if self.promoted else KEPT

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decision": self.decision}


# --------------------------------------------------------------------------- registry reads


def _client(client: Any = None) -> Any:
    if client is not None:
        return client
    from mlflow import MlflowClient

    return MlflowClient()


def _error_code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", "") or "")


_MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def champion_version(name: str, client: Any = None) -> str | None:
    """The version the ``champion`` alias of ``name`` points at; None when there is none
    (or no registered model ``name`` yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(_client(client).get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException as exc:
        if _error_code(exc) in _MISSING:
            return None
        raise


# --------------------------------------------------------------------------- the lock


class PromotionLock:
    """A ticket lock in the registry (see the module doc): ``with PromotionLock(client, name):``.

    ``stale_after``: seconds after which a ticket is taken for a crashed holder's and
    deleted; ``wait``: how long to wait for the lock before :class:`PromotionLockTimeout`."""

    def __init__(self, client: Any, name: str, *, stale_after: float = 120.0, wait: float = 300.0,
                 poll: float = 0.2) -> None:
        self.client, self.name, self.lock_name = client, name, f"{name}{LOCK_SUFFIX}"
        self.stale_after, self.wait, self.poll = float(stale_after), float(wait), float(poll)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.ticket: int | None = None
        self.broken: list[int] = []  # stale tickets this holder deleted

    def _ensure_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(
                self.lock_name, tags={"ser.kind": "promotion-lock"},
                description=f"Not a model: the promotion lock of {self.name} (ser.adapters.champion). Each version is a "
                            "ticket; the lowest live one holds the lock.")
        except MlflowException as exc:
            if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise

    def _live(self) -> list[Any]:
        return list(self.client.search_model_versions(f"name='{self.lock_name}'", max_results=1000))

    def acquire(self) -> "PromotionLock":
        self._ensure_model()
        # the source is a placeholder (the server insists on a well-formed remote URI): nothing is stored there
        mine = self.client.create_model_version(self.lock_name, source=f"s3://ser-promotion-lock/{self.name}",
                                                tags={"owner": self.owner}, description=f"ticket of {self.owner}")
        self.ticket, mine_ms = int(mine.version), int(mine.creation_timestamp)
        started = time.monotonic()
        try:
            while True:
                waited = time.monotonic() - started
                earlier = [v for v in self._live() if int(v.version) < self.ticket]
                if not earlier:
                    return self
                for other in earlier:  # age on the server's clock: its creation vs ours, plus our wait
                    age = (mine_ms - int(other.creation_timestamp)) / 1000.0 + waited
                    if age > self.stale_after:
                        self._delete(int(other.version))
                        self.broken.append(int(other.version))
                if waited > self.wait:
                    holders = ", ".join(f"v{v.version} ({(v.tags or {}).get('owner', '?')})" for v in earlier)
                    raise PromotionLockTimeout(f"{self.lock_name}: waited {waited:.0f} s for the promotion lock, "
                                               f"held by ticket {holders}")
                time.sleep(self.poll)
        except BaseException:
            self.release()
            raise

    def held(self) -> bool:
        """Whether our ticket is still live (not broken as stale by a waiter)."""
        from mlflow.exceptions import MlflowException

        if self.ticket is None:
            return False
        try:
            self.client.get_model_version(self.lock_name, str(self.ticket))
            return True
        except MlflowException as exc:
            if _error_code(exc) in _MISSING:
                return False
            raise

    def _delete(self, version: int) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_model_version(self.lock_name, str(version))
        except MlflowException as exc:
            if _error_code(exc) not in _MISSING:  # already gone: someone else broke or released it
                raise

    def release(self) -> None:
        if self.ticket is not None:
            ticket, self.ticket = self.ticket, None
            self._delete(ticket)

    def __enter__(self) -> "PromotionLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# --------------------------------------------------------------------------- the gate


def _better(candidate: float, champion: float, higher_is_better: bool) -> bool:
    return candidate > champion if higher_is_better else candidate < champion


def gate(name: str, version: str | int, candidate_value: float, score: Callable[[str], Score], *,
         metric: str = "macro_f1", higher_is_better: bool = True, tags: Mapping[str, Any] | None = None,
         client: Any = None, attempts: int = 3, stale_after: float = 120.0, wait: float = 300.0) -> Verdict:
    """THE promotion gate: move ``champion`` of ``name`` to ``version`` only if it beats the
    current champion on the candidate's own rows, as a compare-and-set (module doc).

    ``score(champion_version)`` measures that champion's ``metric`` on the rows
    ``candidate_value`` was measured on (a :class:`Score`; ``value`` None = cannot be
    scored there, the champion keeps its place). It runs outside the lock, once per
    champion met. ``tags``: more tags for the candidate version (``promotion.test_set``
    ...). Returns the :class:`Verdict`, also written as ``promotion.*`` tags."""
    client = _client(client)
    version, candidate_value = str(version), float(candidate_value)
    scores: dict[str, Score] = {}
    moved: list[str] = []
    for attempt in range(1, max(1, attempts) + 1):
        seen = champion_version(name, client)
        if seen == version:  # already champion (a rerun of the same step): nothing to move
            return Verdict(name, version, True, candidate_value, seen, None, f"v{version} already is the champion",
                           metric, attempt, moved=moved)
        if seen is not None and seen not in scores:
            scores[seen] = score(seen)  # expensive: outside the lock
        with PromotionLock(client, name, stale_after=stale_after, wait=wait) as lock:
            now = champion_version(name, client)
            if now != seen:
                moved.append(f"v{seen}->v{now}" if seen else f"none->v{now}")
                continue  # the champion moved while we scored: score the new one, try again
            verdict = _decide(name, version, candidate_value, seen, scores.get(seen), metric, higher_is_better, attempt, moved)
            if not lock.held():  # fenced: our ticket was broken as stale, someone else may be deciding
                moved.append("lock lost")
                continue
            _record(client, verdict, tags)
            if verdict.promoted:
                client.set_registered_model_alias(name, CHAMPION, version)
                if seen is not None:
                    _set_tags(client, name, seen, {"promotion.superseded_by": version,
                                                   "promotion.superseded_time": _now()})
            return verdict
    reason = (f"the champion kept moving while this candidate was scored ({', '.join(moved)}); "
              f"gave up after {attempts} attempts, champion not changed")
    verdict = Verdict(name, version, False, candidate_value, champion_version(name, client), None, reason, metric,
                      attempts, moved=moved)
    _record(client, verdict, tags)
    return verdict


def _decide(name: str, version: str, candidate: float, champion: str | None, scored: Score | None, metric: str,
            higher_is_better: bool, attempt: int, moved: list[str]) -> Verdict:
    after = f" (after the champion moved: {', '.join(moved)})" if moved else ""
    if champion is None:
        return Verdict(name, version, True, candidate, None, None, "no champion yet" + after, metric, attempt, moved=moved)
    assert scored is not None
    if scored.value is None:
        reason = f"champion v{champion} cannot be scored on this test set ({scored.why}); not compared{after}"
        return Verdict(name, version, False, candidate, champion, None, reason, metric, attempt, scored.note, moved)
    promote = _better(candidate, scored.value, higher_is_better)
    how = f" {scored.how}" if scored.how else ""
    reason = (f"{metric} {candidate:.4f} {'beats' if promote else 'does not beat'} champion v{champion}'s "
              f"{scored.value:.4f}{how}{after}")
    return Verdict(name, version, promote, candidate, champion, float(scored.value), reason, metric, attempt,
                   scored.note, moved)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _set_tags(client: Any, name: str, version: str, tags: Mapping[str, Any]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value)[:5000])


def _record(client: Any, verdict: Verdict, extra: Mapping[str, Any] | None) -> None:
    tags = {
        "promotion.decision": verdict.decision,
        "promotion.reason": verdict.reason,
        "promotion.metric": verdict.metric,
        "promotion.candidate_value": f"{verdict.candidate:.6g}",
        "promotion.champion_value": "" if verdict.champion is None else f"{verdict.champion:.6g}",
        "promotion.champion_version": verdict.champion_version or "",
        "promotion.attempts": str(verdict.attempts),
        "promotion.time": _now(),
        verdict.metric: f"{verdict.candidate:.6g}",
        **({"promotion.note": verdict.note} if verdict.note else {}),
        **{k: v for k, v in (extra or {}).items()},
    }
    _set_tags(client, verdict.name, verdict.version, tags)


# --------------------------------------------------------------------------- the S3 serving copy


def info(name: str, client: Any = None) -> dict[str, Any] | None:
    """The champion version of ``name``: version, run, source, tags; None without one."""
    client = _client(client)
    version = champion_version(name, client)
    if version is None:
        return None
    mv = client.get_model_version(name, version)
    return {"name": name, "version": str(mv.version), "model_uri": f"models:/{name}@{CHAMPION}",
            "version_uri": f"models:/{name}/{mv.version}", "run_id": mv.run_id, "source": mv.source,
            "aliases": list(mv.aliases), "tags": dict(mv.tags)}


def sync_serving_copy(name: str, store: Any, bucket: str, *, client: Any = None, attempts: int = 3) -> dict[str, Any] | None:
    """Make ``s3://bucket/name/champion/`` (KServe layout: the TorchServe .mar built from
    the registry champion's model.pt, and config.properties) and the pointer
    ``name/registry/champion.json`` hold what the registry's ``champion`` alias names.

    The only writer of the S3 copy; it reads the registry, never S3, to know who the
    champion is. After copying, the alias is read again: if it moved meanwhile (a
    concurrent promotion), the copy is made again, so the last sync to finish always
    leaves the latest champion (at most ``attempts`` rounds). Returns the pointer
    written, or None when ``name`` has no champion (S3 left as it is)."""
    from ser.adapters import models_uri
    from ser.serve import package

    client = _client(client)
    for _ in range(max(1, attempts)):
        record = info(name, client)
        if record is None:
            return None
        version = record["version"]
        bundle = models_uri.resolve(f"models:/{name}/{version}")
        with tempfile.TemporaryDirectory(prefix="ser-serving-copy-") as tmp:
            stage = Path(tmp) / "champion"
            mar = package.build_mar(bundle, Path(tmp) / f"{name}.mar", name=name, version="1.0")
            package.kserve_layout(mar, stage)
            store.upload_dir(stage, bucket, f"{name}/{SERVING_PREFIX}", progress=False)
            tags = record["tags"]
            pointer = {"name": name, "version": version, "model_uri": record["version_uri"], "run_id": record["run_id"],
                       "storage_uri": f"s3://{bucket}/{name}/{SERVING_PREFIX}", "mar_key": f"{name}/{SERVING_PREFIX}/model-store/{name}.mar",
                       "record": f"MLflow registry alias models:/{name}@{CHAMPION} (this file is a copy, never read to decide)",
                       "metrics": {k: float(tags[k]) for k in ("macro_f1",) if _is_number(tags.get(k))},
                       "promotion": {k.removeprefix("promotion."): v for k, v in tags.items() if k.startswith("promotion.")},
                       "synced": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            path = Path(tmp) / "champion.json"
            path.write_text(json.dumps(pointer, indent=2) + "\n", encoding="utf-8")
            store.put_file(bucket, f"{name}/{POINTER}", path)
        if champion_version(name, client) == version:
            return pointer
    raise ChampionError(f"{name}: the champion kept moving while its S3 serving copy was written ({attempts} rounds); "
                        "run the sync again")


def _is_number(text: Any) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False
