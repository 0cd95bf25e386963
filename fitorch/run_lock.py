"""One writer per `run_dir`: the lock file a fit holds while it may write there.

Why: killing a launcher (`torchrun`) with SIGKILL leaves its workers running; they finish the fit
and write logs and checkpoints after the launcher is gone, and running the same command again
would then put two writers on one `run_dir`. So the main process of a fit with `run_dir` holds
`run_dir/fitorch.lock` from the start of `fit` (before the first batch and before anything is
written) to its end, failures included. The file says who holds it (pid, host, when, command).

A second fit finds the file and asks whether its owner still runs. On the same host it can tell:
the owner is gone when its pid no longer exists, is a zombie, or now belongs to a younger process
(pid reuse, seen from the start time in `/proc/<pid>/stat`), or when the machine has rebooted
since; such a stale lock is taken over, with a warning. An owner that runs, or one on another
host (which cannot be checked from here), refuses the fit with `RunDirLocked` before anything is
touched. Taking the lock is atomic on local and network filesystems: a complete file is written
beside it and hard-linked into place, which fails when the lock exists.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("fitorch")

LOCK_FILE = "fitorch.lock"


class RunDirLocked(RuntimeError):
    """`fit` refused: another live fit holds its `run_dir`.

    The message names the lock file, its owner (pid, host, since when, command) and the ways on.
    Raised on every process of the fit, before anything is trained or written.
    """


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _boot_id() -> str | None:
    text = _read("/proc/sys/kernel/random/boot_id")
    return text.strip() if text else None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _process_stat(pid: int) -> tuple[str, int] | None:
    """`(state, start time in clock ticks since boot)` of `pid` from `/proc/<pid>/stat`; None where unknown."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # after "pid (command) ", which may hold spaces
    return fields[0], int(fields[19])


def _identity() -> dict[str, Any]:
    """Who this process is, as the lock file records it."""
    stat = _process_stat(os.getpid())
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "boot_id": _boot_id(),
        "pid_namespace": _pid_namespace(),
        "start_ticks": stat[1] if stat else None,
        "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv)[:500],
    }


def process_exists(pid: int) -> bool:
    """Whether a process `pid` exists on this host (a zombie or another user's process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, and another user's
        return True
    return True


def _owner_gone(owner: dict[str, Any]) -> bool:
    """Whether the process that wrote `owner` has certainly ended; False when it runs or cannot be checked."""
    here = _identity()
    if owner.get("host") != here["host"] or owner.get("pid_namespace") != here["pid_namespace"]:
        return False  # another machine or container: its processes cannot be seen from here
    if owner.get("boot_id") and here["boot_id"] and owner["boot_id"] != here["boot_id"]:
        return True  # the machine rebooted since
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if not process_exists(pid):
        return True
    stat = _process_stat(pid)
    if stat is None:
        return False
    state, start_ticks = stat
    started_elsewhen = owner.get("start_ticks") is not None and start_ticks != owner["start_ticks"]
    return state in ("Z", "X") or started_elsewhen  # exited (not reaped yet), or the pid was reused


def _same_process(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("pid", "host", "pid_namespace", "boot_id", "start_ticks")
    return bool(a) and all(a.get(key) == b.get(key) for key in keys)


def _describe(owner: dict[str, Any]) -> str:
    return (
        f"process {owner.get('pid')} on host {owner.get('host')!r} (since {owner.get('since')}, "
        f"command: {owner.get('command')!r})"
    )


@dataclass
class RunLock:
    """The lock on one `run_dir`, held by this process until `release`.

    Attributes:
        path: the lock file.
        owner: what the lock file records about this process.
    """

    path: str
    owner: dict[str, Any]

    def release(self) -> None:
        """Remove the lock file, if it is still this process's (never another's)."""
        text = _read(self.path)
        if text is not None and _parse(text) == self.owner:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass


def _parse(text: str) -> dict[str, Any] | None:
    try:
        owner = json.loads(text)
    except ValueError:
        return None
    return owner if isinstance(owner, dict) else None


def _try_create(path: str, owner: dict[str, Any]) -> bool:
    """Put a complete lock file at `path` atomically; False when one is there already."""
    beside = f"{path}.{owner['host']}.{owner['pid']}.tmp"  # unique among the hosts sharing the folder
    with open(beside, "w") as handle:
        json.dump(owner, handle)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(beside, path)  # atomic, and fails when `path` exists, on NFS too
        return True
    except FileExistsError:
        return False
    finally:
        os.remove(beside)


def _take_over(path: str, stale_text: str) -> None:
    """Remove the stale lock `path`, unless another process replaced it since it was read."""
    aside = f"{path}.{socket.gethostname()}.{os.getpid()}.stale"
    try:
        os.rename(path, aside)  # atomic: of several processes taking over, one moves the file
    except FileNotFoundError:
        return
    if _read(aside) != stale_text:  # a newer, live lock was moved: put it back
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
    os.remove(aside)


def acquire(run_dir: str) -> RunLock:
    """Take the lock on `run_dir` for this process, creating the folder if needed.

    Args:
        run_dir: the run's folder.

    Returns:
        The held lock; call `release()` when the fit ends.

    Raises:
        RunDirLocked: a live process (or one on another host) holds the lock.
    """
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_FILE)
    owner = _identity()
    for _ in range(3):  # a takeover can race with another process's; retry a little
        if _try_create(path, owner):
            return RunLock(path, owner)
        text = _read(path)
        if text is None:
            continue  # released meanwhile
        holder = _parse(text) or {}
        if _same_process(holder, owner):  # left by an earlier fit of this process (fit is not re-entrant)
            return RunLock(path, holder)
        if not holder or not _owner_gone(holder):
            raise RunDirLocked(_refusal(run_dir, path, holder))
        logger.warning("run_dir %s: taking over the lock of %s, which has ended.", run_dir, _describe(holder))
        _take_over(path, text)
    raise RunDirLocked(_refusal(run_dir, path, _parse(_read(path) or "") or {}))


def _refusal(run_dir: str, path: str, holder: dict[str, Any]) -> str:
    who = _describe(holder) if holder else "a process that left an unreadable lock file"
    return (
        f"run_dir {run_dir!r} is in use by another fit: {who} holds {path}. Two fits writing one run_dir "
        "would interleave its logs and overwrite its checkpoints. If that process is a worker left running "
        "after its launcher was killed, stop it or let it finish; if it has ended (on another host, or a "
        "machine that crashed), delete the lock file; or give this fit another run_dir."
    )


def lock_run_dir(run_dir: str | None, accelerator: Any) -> RunLock | None:
    """Take the lock on `run_dir` on the main process; every process raises if it is refused.

    Every process of a fit calls this at the same point. The main process takes the lock; under
    several processes its outcome is shared, so that all of them refuse together and none is left
    waiting in a collective call.

    Args:
        run_dir: the learner's `run_dir`; None takes no lock.
        accelerator: the accelerator of the running fit.

    Returns:
        The lock on the main process, None elsewhere or without `run_dir`.

    Raises:
        RunDirLocked: another live fit holds `run_dir`.
    """
    if run_dir is None:
        return None
    lock, refusal = None, None
    if accelerator.is_main_process:
        try:
            lock = acquire(run_dir)
        except RunDirLocked as error:
            refusal = str(error)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refusal = broadcast_object_list([refusal])[0]  # from the main process to all
    if refusal is not None:
        raise RunDirLocked(refusal)
    return lock
