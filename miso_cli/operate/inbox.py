"""A run's inbox: requests ``miso submit``, ``miso cancel`` and ``miso priority`` leave for it.

A request is one JSON file in ``<run dir>/inbox/``, written so that it is either
complete or absent: created under a temporary name with ``O_CREAT|O_EXCL|O_NOFOLLOW``,
fsynced, renamed, and the folder fsynced, before ``miso submit`` says it is queued.
It stays there until the running ``miso run`` has put it in its journal, so a
request survives ``kill -9`` of either side and is taken on ``miso run --resume``.

Who may write: the user who owns the run (its run directory), or root on that
user's behalf (the file is then given to the run's owner). Under ``sudo miso run``
the run is root's, so only ``sudo miso submit`` reaches it. The run itself trusts
nothing in the inbox: it takes only regular files that its own user owns, of
bounded size, and validates a submitted queue again exactly as ``miso run``
validates a queue file.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miso_cli.errors import BadInput, MisoError, PermissionDenied
from miso_cli.spec.queue import NAME_RE, JobSpec, parse_queue

INBOX = "inbox"
REQUEST_VERSION = 1
MAX_REQUEST_BYTES = 1 << 20  # a queue file larger than 1 MiB is not a queue file
KINDS = ("submit", "cancel", "priority")


@dataclass
class Request:
    """One validated request from the inbox."""

    id: str
    kind: str  # submit, cancel, priority
    submitted_at: float
    jobs: list[JobSpec] = field(default_factory=list)  # submit
    names: list[str] = field(default_factory=list)  # cancel, priority
    priority: int | None = None  # priority
    source: str = ""  # the queue file a submission came from


@dataclass
class Rejected:
    id: str
    reason: str


def inbox_dir(run_dir: Path) -> Path:
    return Path(run_dir) / INBOX


def make_inbox(run_dir: Path) -> Path:
    """The inbox folder, created private to the run's owner if missing."""
    d = inbox_dir(run_dir)
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode):
        raise BadInput(f"{d}: is not a folder", hint="remove it; miso makes the inbox itself")
    return d


# ---------------------------------------------------------------- the writing side


def check_submitter(run_dir: Path, *, euid: int | None = None) -> int:
    """Refuse a caller who does not own the run (root may); returns the run owner's uid."""
    euid = os.geteuid() if euid is None else euid
    owner = os.stat(run_dir).st_uid
    if euid != 0 and euid != owner:
        raise PermissionDenied(
            f"run {Path(run_dir).name} belongs to uid {owner}; only its owner or root may "
            "change it",
            hint="a run started with 'sudo miso run' takes 'sudo miso submit'",
        )
    return owner


def write_request(
    run_dir: Path,
    payload: dict[str, Any],
    *,
    euid: int | None = None,
    now: float | None = None,
) -> str:
    """Write one request durably into the run's inbox; returns its id."""
    owner = check_submitter(run_dir, euid=euid)
    euid = os.geteuid() if euid is None else euid
    d = make_inbox(run_dir)
    now = time.time() if now is None else now
    rid = f"{int(now * 1e6):017d}-{secrets.token_hex(4)}"
    body = dict(payload, version=REQUEST_VERSION, id=rid, submitted_at=now, uid=euid)
    data = (json.dumps(body, sort_keys=True) + "\n").encode("utf-8")
    if len(data) > MAX_REQUEST_BYTES:
        raise BadInput(f"request of {len(data)} bytes is over the {MAX_REQUEST_BYTES} limit")
    tmp = d / f".{rid}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        if euid == 0 and owner != 0:
            os.fchown(fd, owner, -1)  # root on the owner's behalf: the run must read it
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, d / f"{rid}.json")
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return rid


def pending(run_dir: Path) -> list[dict[str, Any]]:
    """Requests not yet taken by the run (read leniently, for status displays)."""
    d = inbox_dir(run_dir)
    out = []
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(".json") and not n.startswith("."))
    except OSError:
        return []
    for n in names:
        try:
            raw = _read_bounded(d / n, uid=None)
            data = json.loads(raw)
        except (OSError, ValueError, MisoError):
            continue
        if isinstance(data, dict):
            out.append(data)
    return out


def submitted_names(run_dir: Path) -> set[str]:
    """Names of jobs in submissions the run has not taken yet."""
    names: set[str] = set()
    for req in pending(run_dir):
        if req.get("kind") != "submit" or not isinstance(req.get("queue_text"), str):
            continue
        try:
            spec = parse_queue(str(req["queue_text"]), str(req.get("queue_path") or "queue"))
        except MisoError:
            continue
        names.update(j.name for j in spec.jobs)
    return names


# ---------------------------------------------------------------- the reading side


def _read_bounded(path: Path, *, uid: int | None) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadInput("not a regular file")
        if uid is not None and st.st_uid != uid:
            raise BadInput(f"owned by uid {st.st_uid}, not by the run's user (uid {uid})")
        if st.st_size > MAX_REQUEST_BYTES:
            raise BadInput(f"{st.st_size} bytes, over the {MAX_REQUEST_BYTES} limit")
        chunks, left = [], MAX_REQUEST_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > MAX_REQUEST_BYTES:
            raise BadInput(f"over the {MAX_REQUEST_BYTES} byte limit")
        return data
    finally:
        os.close(fd)


def parse_request(rid: str, data: bytes) -> Request:
    """Validate an untrusted request file's content (BadInput says what is wrong)."""
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadInput(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadInput("not a JSON object")
    if body.get("version") != REQUEST_VERSION:
        raise BadInput(f"request version {body.get('version')!r} is not supported")
    kind = body.get("kind")
    if kind not in KINDS:
        raise BadInput(f"unknown request kind {kind!r}")
    at = body.get("submitted_at")
    if isinstance(at, bool) or not isinstance(at, (int, float)):
        raise BadInput("'submitted_at' is not a number")
    req = Request(id=rid, kind=str(kind), submitted_at=float(at))
    if kind == "submit":
        text, path = body.get("queue_text"), body.get("queue_path")
        if not isinstance(text, str) or not isinstance(path, str) or not path:
            raise BadInput("a submission needs 'queue_text' and 'queue_path' strings")
        if not os.path.isabs(path) or "\0" in path:
            raise BadInput("'queue_path' must be an absolute path")
        req.jobs = parse_queue(text, path).jobs  # the same checks as a queue file
        req.source = path
        if "priority" in body:
            p = body["priority"]
            if isinstance(p, bool) or not isinstance(p, int) or abs(p) > 10**9:
                raise BadInput("'priority' must be an integer between -1e9 and 1e9")
            for job in req.jobs:
                job.priority = p
        return req
    names = body.get("jobs")
    if not isinstance(names, list) or not names or len(names) > 10_000:
        raise BadInput("'jobs' must be a non-empty list of job names")
    for n in names:
        if not isinstance(n, str) or not NAME_RE.match(n):
            raise BadInput(f"{n!r} is not a job name")
    req.names = list(dict.fromkeys(names))
    if kind == "priority":
        p = body.get("priority")
        if isinstance(p, bool) or not isinstance(p, int) or abs(p) > 10**9:
            raise BadInput("'priority' must be an integer between -1e9 and 1e9")
        req.priority = p
    return req


def take_requests(
    run_dir: Path, *, uid: int | None = None, taken: set[str] | frozenset[str] = frozenset()
) -> tuple[list[Request], list[Rejected]]:
    """The requests waiting in the inbox, oldest first, and the files that are not requests.

    Nothing is removed: the caller journals what it took, then calls :func:`done`.
    A request whose id is in ``taken`` (journaled before a crash) is only removed.
    """
    uid = os.geteuid() if uid is None else uid
    d = inbox_dir(run_dir)
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return [], []
    good: list[Request] = []
    bad: list[Rejected] = []
    for n in names:
        if n.startswith(".") or not n.endswith(".json"):
            continue
        rid = n[: -len(".json")]
        if rid in taken:
            done(run_dir, [rid])
            continue
        try:
            good.append(parse_request(rid, _read_bounded(d / n, uid=uid)))
        except FileNotFoundError:
            continue
        except (OSError, MisoError) as exc:
            message = exc.message if isinstance(exc, MisoError) else str(exc)
            bad.append(Rejected(rid, " ".join(message.split())))
    return good, bad


def done(run_dir: Path, ids: list[str]) -> None:
    """Remove requests the run has journaled."""
    for rid in ids:
        try:
            os.unlink(inbox_dir(run_dir) / f"{rid}.json")
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------- into the journal


@dataclass
class Intake:
    """What the run loop must do after :func:`absorb` changed the journal."""

    ids: list[str] = field(default_factory=list)  # to remove from the inbox once saved
    arrived: list[str] = field(default_factory=list)  # new jobs: an arrival event each
    cancel_running: list[str] = field(default_factory=list)  # checkpoint-and-stop these
    events: list[dict[str, Any]] = field(default_factory=list)  # to emit
    reprioritised: bool = False  # the policy should look again

    @property
    def changed(self) -> bool:
        return bool(self.ids)


CANCELLED = "cancelled"


def absorb(journal: Any, *, now: float, uid: int | None = None) -> Intake:
    """Take the inbox's requests into ``journal`` (a :class:`miso_cli.runtime.journal.Journal`).

    New jobs are added waiting, queued at ``now``; a waiting job that is cancelled
    becomes ``cancelled`` at once, a running one is listed in ``cancel_running``
    for the loop to checkpoint and stop; priorities are changed in the journaled
    queue. Every request, taken or refused, is kept in ``journal.data["requests"]``.
    The caller saves the journal, then calls :func:`done` with ``Intake.ids``.
    """
    from miso_cli.runtime.journal import JobRecord

    log: list[dict[str, Any]] = journal.data.setdefault("requests", [])
    taken = {r.get("id") for r in log}
    good, bad = take_requests(journal.run_dir, uid=uid, taken=taken)  # type: ignore[arg-type]
    out = Intake()
    for r in bad:
        log.append({"id": r.id, "kind": None, "at": now, "status": "rejected", "reason": r.reason})
        out.ids.append(r.id)
        out.events.append({"event": "request_rejected", "id": r.id, "reason": r.reason})
    queue_jobs: list[dict[str, Any]] = journal.data["queue"]["jobs"]
    for req in good:
        entry: dict[str, Any] = {"id": req.id, "kind": req.kind, "at": now}
        later: list[dict[str, Any]] = []  # what follows from it, after the request itself
        out.ids.append(req.id)
        if req.kind == "submit":
            clash = [j.name for j in req.jobs if j.name in journal.jobs]
            if clash:
                entry.update(status="rejected", reason=f"job name(s) in use: {', '.join(clash)}")
            else:
                for spec in req.jobs:
                    queue_jobs.append(spec.to_json())
                    # An ``arrival`` in a submitted queue counts from its submission.
                    queued = now + float(getattr(spec, "arrival_s", 0.0) or 0.0)
                    journal.jobs[spec.name] = JobRecord(spec.name, queued_at=queued)
                    out.arrived.append(spec.name)
                entry.update(status="taken", jobs=[j.name for j in req.jobs], source=req.source)
        else:
            unknown = [n for n in req.names if n not in journal.jobs]
            names = [n for n in req.names if n in journal.jobs]
            entry.update(jobs=req.names)
            if unknown:
                entry["unknown"] = unknown
            if req.kind == "cancel":
                for n in names:
                    rec = journal.jobs[n]
                    if rec.state == "waiting":
                        rec.state = CANCELLED
                        rec.ended_at = now
                        rec.reason = "cancelled by miso cancel"
                        later.append({"event": CANCELLED, "job": n, "reason": rec.reason})
                    elif rec.state in ("starting", "running", "stopping"):
                        out.cancel_running.append(n)
            else:
                for spec in queue_jobs:
                    if spec["name"] in names:
                        spec["priority"] = req.priority
                out.reprioritised = bool(names)
                entry["priority"] = req.priority
            entry["status"] = "taken" if names else "rejected"
            if not names:
                entry["reason"] = "no such job in this run"
        log.append(entry)
        ev = {"event": "request", **{k: v for k, v in entry.items() if k not in ("at", "kind")}}
        ev["request"] = req.kind
        out.events.append(ev)
        out.events.extend(later)
    return out


def describe_event(event: dict[str, Any]) -> str:
    """One line for the live view about a request or a cancellation."""
    kind = event.get("event")
    if kind == CANCELLED:
        return f"{event.get('job')}: cancelled ({event.get('reason', '')})"
    if kind == "request_rejected":
        return f"request {event.get('id')} refused: {event.get('reason', '')}"
    jobs = ", ".join(event.get("jobs") or [])
    what = event.get("request")
    if event.get("status") != "taken":
        return f"{what} {jobs}: refused ({event.get('reason', '')})"
    if what == "submit":
        return f"submitted: {jobs}"
    if what == "priority":
        return f"priority of {jobs} set to {event.get('priority')}"
    return f"cancel requested: {jobs}"
