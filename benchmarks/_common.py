"""Helpers shared by the benchmark scripts (standard library only, so every script runs anywhere).

* :func:`machine_info` - what a result was measured on (CPU, cores, load, GPU, versions, date).
* :class:`TreeMemorySampler` - peak memory of a process *and its children* (decode workers),
  sampled from ``/proc`` in a background thread: the sum of RSS (counts shared pages once per
  process, an upper bound) and the sum of PSS (shared pages split between processes, the honest
  total).
* :func:`report` - print a markdown table and optionally write the JSON next to it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
FLICKR8K = SHARED / "flickr8k"
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))


def machine_info() -> dict[str, Any]:
    """CPU model, cores, load average, memory, GPU and library versions, UTC date."""
    info: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
    }
    if hasattr(os, "getloadavg"):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    try:
        with open("/proc/meminfo") as f:
            total_kb = int(f.readline().split()[1])
        info["memory_gb"] = round(total_kb / 1e6, 1)
    except OSError:
        pass
    for module in ("torch", "PIL", "numpy"):
        mod = sys.modules.get(module)
        if mod is not None:
            info[module] = getattr(mod, "__version__", "?")
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux: /proc/PID/task/*/children)."""
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids.extend(int(x) for x in f.read().split())
    except OSError:
        pass
    return kids


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def _mem_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB; (0, 0) when it is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = pss = int(line.split()[1])
        except OSError:
            pass
    return rss, pss


class TreeMemorySampler:
    """Sample the memory of ``pid`` and all its descendants every ``interval`` seconds.

    Use as a context manager; afterwards ``peak_rss_mb`` / ``peak_pss_mb`` hold the largest
    sampled totals and ``peak_processes`` the largest number of processes seen at once.
    """

    def __init__(self, pid: int | None = None, interval: float = 0.1) -> None:
        self.pid = pid or os.getpid()
        self.interval = interval
        self.peak_rss_mb = 0.0
        self.peak_pss_mb = 0.0
        self.peak_processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        pids = _tree(self.pid)
        rss = pss = 0
        for p in pids:
            r, s = _mem_kb(p)
            rss += r
            pss += s
        self.peak_rss_mb = max(self.peak_rss_mb, rss / 1024)
        self.peak_pss_mb = max(self.peak_pss_mb, pss / 1024)
        self.peak_processes = max(self.peak_processes, len(pids))
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_timed(
    cmd: Sequence[str], *, env: dict[str, str] | None = None, sample_memory: bool = False
) -> dict[str, Any]:
    """Run ``cmd``; wall time, exit code, stdout, and (optionally) peak tree memory."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p), **(env or {})},
    )  # fmt: skip
    sampler = TreeMemorySampler(proc.pid) if sample_memory else None
    if sampler is not None:
        sampler.__enter__()
    try:
        out, err = proc.communicate()
    finally:
        if sampler is not None:
            sampler.__exit__()
    result: dict[str, Any] = {
        "wall_s": time.perf_counter() - started, "rc": proc.returncode, "stdout": out,
        "stderr": err,
    }  # fmt: skip
    if sampler is not None:
        result["peak_rss_mb"] = round(sampler.peak_rss_mb, 1)
        result["peak_pss_mb"] = round(sampler.peak_pss_mb, 1)
        result["peak_processes"] = sampler.peak_processes
    return result


def last_json_line(text: str) -> dict[str, Any]:
    """The last line of ``text`` that parses as a JSON object (photocap's --json summary)."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise ValueError("no JSON summary in output")


def markdown_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def report(title: str, table: str, data: dict[str, Any], json_path: Path | None) -> None:
    """Print the markdown summary (title, machine, table) and write ``data`` as JSON."""
    info = data.setdefault("machine", machine_info())
    print(f"## {title}\n")
    print(f"machine: {info.get('cpu')}, {info.get('cores')} cores"
          + (f", GPU {info['gpu']}" if info.get("gpu") else "")
          + f", load {info.get('load_avg_1m')}, {info.get('date_utc')}\n")  # fmt: skip
    print(f"command: `{' '.join(['python', *sys.argv])}`\n")
    print(table)
    print()
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def dev_set_parser(doc: str) -> argparse.ArgumentParser:
    """A parser with the arguments every dev-set quality script takes: --data, --model,
    --split, --limit."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="Flickr8k folder")
    parser.add_argument("--model", type=Path, default=None, help="model file (default: shipped)")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--limit", type=int, default=None)
    return parser
