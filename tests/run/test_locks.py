"""The run lock (sparkvision.run.locks.run_lock): a lease that its run renews, taken over only once it ran out
(or at once when its process is gone from this host), and every change conditional on the lock read, so
that two runs racing for one stale lock cannot both win, on a local disk and on S3 (moto's server)."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import socket
import threading
import time
import uuid

import pytest

from sparkvision.run import locks, storage
from sparkvision.run.layout import RunLayout

# The S3 server and bucket of the storage tests (pytest finds fixtures imported into a module).
from helpers import BUCKET

OTHER_HOST = "driver-that-died"


def _foreign(expires_in: float, host: str = OTHER_HOST, pid: int = 4242) -> dict:
    """A lock as a run on another host wrote it, its lease running out in ``expires_in`` s (past if < 0)."""
    now = time.time()
    return {"host": host, "pid": pid, "user": "someone", "command": "train", "started": now - 600,
            "expires": now + expires_in, "token": uuid.uuid4().hex}


def _write(uri: str, lock: dict) -> None:
    storage.write_bytes(uri, (json.dumps(lock) + "\n").encode())


@pytest.fixture
def lock(tmp_path) -> str:
    return RunLayout(str(tmp_path / "out")).lock


def test_a_lock_carries_a_lease_and_a_token_and_is_released(lock):
    before = time.time()
    with locks.run_lock(lock, "run") as owner:
        held = storage.read_json(lock)
        assert held == owner and held["command"] == "run" and len(held["token"]) == 32
        assert before + locks.DEFAULT_LEASE_S <= held["expires"] <= time.time() + locks.DEFAULT_LEASE_S
    assert not storage.exists(lock)


def test_a_live_lease_from_another_host_is_refused(lock):
    held = _foreign(expires_in=90)
    _write(lock, held)
    with pytest.raises(locks.OutputLocked) as e:
        with locks.run_lock(lock, "evaluate"):
            pass
    message = str(e.value)
    assert message.startswith(f"output folder is in use: {lock} is held by 'sparkvision train' (pid 4242 on {OTHER_HOST}, "
                              "user someone, started 10 min ago; its lease expires in ")
    assert "unless that run renews it" in message
    assert storage.read_json(lock) == held  # untouched


def test_a_lock_without_a_lease_from_another_host_is_refused(lock):
    _write(lock, {k: v for k, v in _foreign(expires_in=-3600).items() if k not in ("expires", "token")})
    with pytest.raises(locks.OutputLocked, match="it has no lease, so it never expires"):
        with locks.run_lock(lock, "evaluate"):
            pass


def test_an_expired_lease_from_another_host_is_taken_over(lock, caplog):
    _write(lock, _foreign(expires_in=-5))
    with caplog.at_level(logging.WARNING, logger="sparkvision.run.locks"):
        with locks.run_lock(lock, "evaluate") as owner:
            assert storage.read_json(lock)["token"] == owner["token"]
    assert f"output lock {lock} was left by {OTHER_HOST} (pid 4242), whose lease ran out 5 s ago; taking it over" in caplog.text
    assert not storage.exists(lock)


def test_a_dead_process_of_this_host_is_taken_over_before_its_lease_runs_out(lock, caplog):
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    _write(lock, _foreign(expires_in=90, host=socket.gethostname(), pid=gone.pid))
    with caplog.at_level(logging.WARNING, logger="sparkvision.run.locks"):
        with locks.run_lock(lock, "evaluate"):
            pass
    assert f"was left by pid {gone.pid}, no longer running; taking it over" in caplog.text


def test_renewal_keeps_a_long_runs_lock(lock, monkeypatch):
    monkeypatch.setenv(locks.LEASE_ENV, "1.5")  # renewed every 0.5 s: a stall of 1 s is tolerated
    with locks.run_lock(lock, "run") as owner:
        first = storage.read_json(lock)["expires"]
        time.sleep(3.2)  # more than two leases
        assert storage.read_json(lock)["expires"] > first + 1.5  # renewed
        with pytest.raises(locks.OutputLocked, match=r"'sparkvision run' .* its lease expires in"):
            with locks.run_lock(lock, "evaluate"):
                pass
        assert storage.read_json(lock)["token"] == owner["token"]
    assert not storage.exists(lock)


def test_release_and_renewal_leave_a_lock_another_run_took_over(lock, monkeypatch, caplog):
    monkeypatch.setenv(locks.LEASE_ENV, "0.6")
    successor = _foreign(expires_in=90)
    with caplog.at_level(logging.ERROR, logger="sparkvision.run.locks"):
        with locks.run_lock(lock, "run"):
            _write(lock, successor)  # our lease ran out and another run took the lock over
            time.sleep(1.0)  # renewals every 0.2 s: they must not overwrite it
    assert storage.read_json(lock) == successor
    assert f"output lock {lock} is no longer this run's" in caplog.text


def test_the_lease_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(locks.LEASE_ENV, "7.5")
    assert locks.lease_seconds() == 7.5
    monkeypatch.setenv(locks.LEASE_ENV, "soon")
    with pytest.raises(ValueError, match=r"\$SPARKVISION_LOCK_LEASE_S must be a number of seconds above 0, not 'soon'"):
        locks.lease_seconds()


def _contend(lock: str, start, results, done) -> None:
    """One of two runs starting at once on a folder whose lock is stale: report, then hold until told.

    Each takes a random 0-20 ms to judge the lock it read, so that one often acts on a lock the other has
    already replaced: a takeover that deleted whatever lock is there (check, then delete) lets both win."""
    judge = locks._stale

    def slow_judge(held, now):
        time.sleep(random.uniform(0, 0.02))
        return judge(held, now)

    locks._stale = slow_judge  # in this child process only
    start.wait()
    try:
        with locks.run_lock(lock, "run"):
            results.put("won")
            done.wait(60)
    except locks.OutputLocked:
        results.put("refused")


def test_two_processes_racing_for_one_stale_lock_one_wins(lock):
    ctx = multiprocessing.get_context("fork")
    for _ in range(20):
        _write(lock, _foreign(expires_in=-1))
        start, done, results = ctx.Barrier(2), ctx.Event(), ctx.Queue()
        runs = [ctx.Process(target=_contend, args=(lock, start, results, done)) for _ in range(2)]
        for run in runs:
            run.start()
        outcomes = sorted(results.get(timeout=60) for _ in runs)
        done.set()
        for run in runs:
            run.join(60)
            assert run.exitcode == 0
        assert outcomes == ["refused", "won"]
        assert not storage.exists(lock)  # the winner released it
    assert storage.listdir(os.path.dirname(lock)) == []  # no lock renamed aside and left behind


def test_the_best_effort_lock_reads_back_what_it_wrote(tmp_path):
    store = locks._BestEffortLock(str(tmp_path / "lock"))
    assert store.create(b"first") and not store.create(b"second")
    assert not store.replace_if(lambda data: data == b"other", b"x") and store.read() == b"first"
    assert store.replace_if(lambda data: data == b"first", b"renewed") and store.read() == b"renewed"
    assert not store.delete_if(lambda data: data == b"first") and store.delete_if(lambda data: data == b"renewed")
    assert store.read() is None


# ---- on S3 -----------------------------------------------------------------------------------------------


def _s3_lock(name: str) -> tuple[str, str]:
    lay = RunLayout(f"s3a://{BUCKET}/runs/{name}")
    return lay.lock, f"runs/{name}/.sparkvision.lock"


def test_on_s3_a_stale_lock_is_taken_over_a_live_one_refused(s3):
    lock, key = _s3_lock("stale")
    assert isinstance(locks._lock_store(lock), locks._S3Lock)  # the conditional puts, not best effort
    _write(lock, _foreign(expires_in=-5))
    with locks.run_lock(lock, "evaluate") as owner:
        assert json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())["token"] == owner["token"]
        with pytest.raises(locks.OutputLocked, match=r"'sparkvision evaluate' .* its lease expires in"):
            with locks.run_lock(lock, "train"):
                pass
        successor = _foreign(expires_in=90)
        _write(lock, successor)  # taken over after our lease ran out: release must leave it
    assert storage.read_json(lock) == successor


def test_on_s3_two_runs_racing_for_one_stale_lock_one_wins(s3):
    lock, _ = _s3_lock("race")
    for _ in range(10):
        _write(lock, _foreign(expires_in=-1))
        start, done, outcomes = threading.Barrier(2), threading.Event(), []

        def contend():
            start.wait()
            try:
                with locks.run_lock(lock, "run"):
                    outcomes.append("won")
                    done.wait(60)
            except locks.OutputLocked:
                outcomes.append("refused")
                done.set()

        runs = [threading.Thread(target=contend) for _ in range(2)]
        for run in runs:
            run.start()
        for run in runs:
            run.join(60)
        assert sorted(outcomes) == ["refused", "won"]
        assert not storage.exists(lock)
