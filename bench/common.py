"""What the benchmarks share: logging, clean subprocess environments, the code to measure
(this checkout and, for ``--baseline REV``, a temporary ``git worktree`` of REV), helper processes
driven over a line protocol, the pipeline process of a ``serve``, CPU time of a process, and py-spy
profiling (start, then summarise by
area, function and leaf)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TextIO

ROOT = Path(__file__).resolve().parents[1]

#: where a sampled stack belongs: the first area one of whose markers is in the stack
ProfileAreas = tuple[tuple[str, tuple[str, ...]], ...]


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def clean_env(*, code_root: Path = ROOT, **extra: str) -> dict[str, str]:
    """The environment without inherited OTELBRIDGE_*/OTEL_* settings, running the otelbridge
    of ``code_root`` (default this checkout, whatever the editable install points at), plus
    ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("OTELBRIDGE_", "OTEL_"))}
    env["PYTHONPATH"] = str(code_root) + (f":{env['PYTHONPATH']}" if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True).stdout


def _exit_143(signum: int, frame: object) -> None:
    sys.exit(143)


@contextlib.contextmanager
def code_roots(baseline: str | None, prefix: str = "otelbridge-bench-code-") -> Iterator[dict[str, Path]]:
    """The otelbridge checkouts to measure, by name: ``current`` is this one; with ``baseline``
    (a git revision) also ``baseline``, that commit checked out into a temporary detached
    ``git worktree``, removed on exit, on failure too. Meanwhile SIGTERM exits through here
    (SystemExit 143, so that every ``finally`` runs), unless the caller handles it. Run a
    checkout's code with ``clean_env(code_root=root)``."""
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_143)
    try:
        with _checkouts(baseline, prefix) as codes:
            yield codes
    finally:
        if previous is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _checkouts(baseline: str | None, prefix: str) -> Iterator[dict[str, Path]]:
    codes = {"current": ROOT}
    if not baseline:
        yield codes
        return
    try:
        commit = git("rev-parse", "--verify", "-q", f"{baseline}^{{commit}}").strip()
    except subprocess.CalledProcessError:
        raise SystemExit(f"--baseline: no commit {baseline!r} in {ROOT}") from None
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        base = Path(tmp) / "baseline"
        try:
            git("worktree", "add", "--detach", "-q", str(base), commit)
            codes["baseline"] = base
            yield codes
        finally:
            if base.exists():
                with contextlib.suppress(subprocess.CalledProcessError):
                    git("worktree", "remove", "--force", str(base))


def describe_code(root: Path, cwd: Path | None = None) -> str:
    """The commit of ``root`` (and whether its otelbridge/ has uncommitted changes), after
    checking that a process with ``clean_env(code_root=root)``, in ``cwd`` (default a temporary
    directory), imports otelbridge from there."""
    out = subprocess.run(
        [sys.executable, "-c", "import otelbridge; print(otelbridge.__file__)"],
        env=clean_env(code_root=root), cwd=cwd or tempfile.gettempdir(), capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    where = Path(out.stdout.strip()).resolve()
    if not where.is_relative_to(root.resolve()):
        raise SystemExit(f"otelbridge for {root} is imported from {where}")
    dirty = git("status", "--porcelain", "--", "otelbridge", cwd=root).strip()
    return git("rev-parse", "--short=12", "HEAD", cwd=root).strip() + (
        " + uncommitted changes to otelbridge/" if dirty else ""
    )


def wait_or_kill(proc: subprocess.Popen[Any], timeout: float) -> None:
    """Wait up to ``timeout`` s for ``proc`` to exit, then kill it."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class InternalProcess:
    """A bench script's ``--internal`` helper in its own process: it prints one JSON line when
    it is ready (with at least ``url``), then answers each command line on its stdin with one
    JSON line; ``quit`` (or the end of its stdin) stops it."""

    def __init__(self, script: str | Path, *args: str, close_timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "--internal", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        self._close_timeout = close_timeout
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline() or "null")
        if not hello:
            self.close()
            raise RuntimeError(f"the {args[0]} helper did not start")
        self.hello: dict[str, Any] = hello
        self.url: str = hello["url"]
        self.pid: int = self.proc.pid

    def ask(self, command: str) -> Any:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        wait_or_kill(self.proc, self._close_timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Receiver(Protocol):
    @property
    def url(self) -> str: ...

    def stop(self) -> None: ...


def answer_commands(
    receiver: Receiver,
    guard: threading.Lock,
    commands: Mapping[str, Callable[[], object]],
    stdin: TextIO,
    stdout: TextIO,
) -> None:
    """The helper side of :class:`InternalProcess` for a started receiver: its url and pid, then
    one JSON line per command line (the answer of ``commands[line]``, under ``guard``); any other
    line, or the end of stdin, stops the receiver."""
    stdout.write(json.dumps({"url": receiver.url, "pid": os.getpid()}) + "\n")
    stdout.flush()
    try:
        for line in stdin:
            command = commands.get(line.strip())
            if command is None:
                break
            with guard:
                answer = command()
            stdout.write(json.dumps(answer) + "\n")
            stdout.flush()
    finally:
        receiver.stop()


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]


def pipeline_pid(webhook_pid: int, timeout: float = 10.0) -> int:
    """The pid of the webhook process's child ``python -m otelbridge.pipeline``."""
    deadline = time.monotonic() + timeout
    while True:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == webhook_pid and cmdline(int(entry.name))[1:3] == ["-m", "otelbridge.pipeline"]:
                    return int(entry.name)
        if time.monotonic() > deadline:
            raise RuntimeError(f"no pipeline process under otelbridge serve (pid {webhook_pid})")
        time.sleep(0.05)


def status_kb(pid: int, fields: Sequence[str], file: str = "status") -> dict[str, int]:
    """``fields`` of a running process's ``/proc/<pid>/status`` (``VmRSS``, ``RssAnon``...), or
    of another ``/proc/<pid>`` file of the same ``Name: value kB`` lines (``smaps_rollup``:
    ``Pss``...), in kB as it says (KiB); empty once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/{file}").read_text().splitlines()
    except OSError:
        return {}
    found: dict[str, int] = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name in fields:
            found[name] = int(value.split()[0])
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_profiler(
    pid: int, out: Path, rate: int, seconds: int | None = None
) -> subprocess.Popen[bytes] | None:
    """py-spy sampling ``pid`` (GIL-holding stacks) into ``out``; None without py-spy."""
    spy = shutil.which("py-spy")
    if spy is None:
        print("warning: --profile needs py-spy (pip install py-spy); not profiling", file=sys.stderr)
        return None
    duration = () if seconds is None else ("--duration", str(seconds))
    return subprocess.Popen(
        [
            *(spy, "record", "--pid", str(pid), *duration, "--rate", str(rate)),
            *("--format", "raw", "--gil", "--nonblocking", "--output", str(out)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarize_profile(
    path: Path, seconds: float, rate: int, areas_of: ProfileAreas, other: str = "other", top: int = 20
) -> dict[str, Any]:
    """Collapsed stacks (py-spy --format raw --gil) -> share of the GIL-holding samples per
    area, per function (inclusive) and per leaf function (self)."""
    inclusive: dict[str, int] = {}
    leaf: dict[str, int] = {}
    areas: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        area = next((label for label, markers in areas_of if any(m in stack for m in markers)), other)
        areas[area] = areas.get(area, 0) + count
        names = [
            re.sub(r" \(/.*?/(otelbridge|site-packages|python3\.\d+)/", " (", frame)
            for frame in stack.split(";")[1:]
        ]
        for name in dict.fromkeys(names):
            inclusive[name] = inclusive.get(name, 0) + count
        if names:
            leaf[names[-1]] = leaf.get(names[-1], 0) + count

    def table(counts: dict[str, int], limit: int = top) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
        return [(name, round(100 * n / max(total, 1), 1)) for name, n in ranked]

    return {
        "samples": total,
        "gil_busy": round(total / max(seconds * rate, 1), 2),
        "areas": table(areas, len(areas)),
        "inclusive": table(inclusive),
        "self": table(leaf),
        "raw": str(path),
    }
