"""Run a workload in a child process and sample the resident memory of its whole process tree.

The tree is the child (driver Python), the JVM it starts and every Python worker the JVM forks;
``/proc`` is read every ``interval`` seconds and the peak of the summed RSS is kept, with the
process kinds that made it. RSS counts pages shared between forked workers once per process, so
the sum is an upper bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

RESULT_PREFIX = "BENCH_RESULT "
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def tree_pids(root: int) -> list[tuple[int, int]]:
    """``(pid, parent pid)`` for ``root`` and all its descendants."""
    children = _children_map()
    pids, todo = [], [(root, 0)]
    while todo:
        pid, parent = todo.pop()
        pids.append((pid, parent))
        todo.extend((child, pid) for child in children.get(pid, []))
    return pids


def _rss_and_kind(pid: int, root: int) -> tuple[int, str] | None:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            rss = int(fh.read().split()[1]) * PAGE
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().split(b"\0")
    except (OSError, IndexError, ValueError):
        return None
    exe = os.path.basename(cmd[0].decode(errors="replace")) if cmd and cmd[0] else "?"
    text = b" ".join(cmd).decode(errors="replace")
    if exe.startswith("java"):
        kind = "jvm"
    elif "pyspark.daemon" in text or "pyspark/daemon" in text:
        kind = "python_daemon"
    elif "pyspark.worker" in text or "pyspark/worker" in text:
        kind = "python_worker"
    elif exe.startswith("python"):
        kind = "python_driver" if pid == root else "python"
    else:
        kind = exe
    return rss, kind


@dataclass
class TreeSample:
    peak_bytes: int = 0
    peak_by_kind: dict = field(default_factory=dict)
    peak_processes: int = 0
    samples: int = 0
    series: list = field(default_factory=list)  # (time.time(), total bytes) per sample

    def peak_between(self, start: float, end: float) -> int:
        """The peak total RSS sampled in ``[start, end]`` (wall-clock seconds, as ``time.time()``)."""
        return max((b for t, b in self.series if start <= t <= end), default=0)


def sample_tree(root: int, stop: threading.Event, interval: float, out: TreeSample) -> None:
    while not stop.is_set():
        total, kinds, count, seen = 0, {}, 0, {}
        for pid, parent in tree_pids(root):
            got = _rss_and_kind(pid, root)
            if got is None:
                continue
            rss, kind = got
            if kind == "python_daemon" and seen.get(parent) in ("python_daemon", "python_worker"):
                kind = "python_worker"  # forked by pyspark's daemon: same command line, a worker
            seen[pid] = kind
            total += rss
            count += 1
            kinds[kind] = kinds.get(kind, 0) + rss
        out.samples += 1
        out.series.append((time.time(), total))
        if total > out.peak_bytes:
            out.peak_bytes, out.peak_by_kind, out.peak_processes = total, kinds, count
        stop.wait(interval)


def run_workload(kind: str, args: dict, timeout: float = 3600, interval: float = 0.1) -> dict:
    """``python -m bench.workloads KIND ARGS`` in a fresh process: its result dict, plus ``peak_rss``."""
    cmd = [sys.executable, "-m", "bench.workloads", kind, json.dumps(args)]
    env = dict(os.environ, PYSPARK_PYTHON=os.environ.get("PYSPARK_PYTHON", sys.executable))
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stop, tree = threading.Event(), TreeSample()
    sampler = threading.Thread(target=sample_tree, args=(proc.pid, stop, interval, tree), daemon=True)
    sampler.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise RuntimeError(f"bench workload {kind} timed out after {timeout:.0f} s\n{stderr[-4000:]}") from None
    finally:
        stop.set()
        sampler.join()
    results = [line[len(RESULT_PREFIX):] for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not results:
        log = os.path.join(args.get("work", "."), "logs", f"{kind}-{args.get('model', '')}-{int(started)}.log")
        os.makedirs(os.path.dirname(log), exist_ok=True)
        with open(log, "w") as fh:
            fh.write(stderr)
        causes = [line for line in stderr.splitlines() if "Error" in line or "Caused by" in line][:8]
        raise RuntimeError(f"bench workload {kind} failed (exit {proc.returncode}); full log {log}\n"
                           + "\n".join(causes) + "\n...\n" + stderr[-3000:])
    result = json.loads(results[-1])
    result["peak_rss"] = {
        "bytes": tree.peak_bytes,
        "by_kind": tree.peak_by_kind,
        "processes": tree.peak_processes,
        "samples": tree.samples,
        "interval_s": interval,
    }
    # A workload that reports its phases' wall-clock spans ("phases": {name: [start, end]}) gets each one's peak.
    phases = result.get("phases") or {}
    if phases:
        result["peak_rss"]["by_phase"] = {name: tree.peak_between(*span) for name, span in phases.items()}
    result["wall_s"] = time.time() - started
    return result
