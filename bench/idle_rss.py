"""Benchmark: the resident memory of an idle ``otelbridge serve`` (webhook process + pipeline).

    python bench/idle_rss.py [--baseline REV] [--repeats 3] [--image-venv DIR] [--settle 5] [--floor]
                             [--json]

A real ``serve`` on loopback ports, with a fresh state directory and an OTLP endpoint nobody
listens on, is started; once its admin port answers ``/healthz`` it is left alone ``--settle``
seconds, then ``VmRSS`` (and its anonymous and file-backed parts) of the webhook process and of
its pipeline child are read from ``/proc``, and it is stopped with SIGTERM.

Also read: each process's ``Pss`` (``/proc/<pid>/smaps_rollup``), its share of the pages it
maps, a page shared by N processes counting 1/N in each. The two processes map the same
interpreter and libraries, so the sum of their RSS counts those pages twice; the sum of their
PSS counts them once, as the pod's memory cgroup charges them.

``--floor`` also measures, in fresh interpreters of the same Python, what any process of this
design holds before a line of otelbridge runs: the interpreter alone, then with ``asyncio``
(anyio's backend; it imports ssl and libcrypto), then with pydantic and one model defined (the
first model imports pydantic's schema machinery). Both processes need all three: the webhook
process validates webhooks and settings with pydantic, the pipeline validates the List Calls
answers; both run on anyio.

``--image-venv DIR`` runs it with the Python of a virtualenv holding only what the image installs
(``requirements/image.txt``, made there if DIR does not exist): the development environment has
test-only packages that the runtime imports when present (httpx imports ``rich`` and ``pygments``
for its command line, the SDK's resources ``psutil``), which the image does not have.

``--baseline REV`` also measures the code of git revision REV (a temporary git worktree),
alternating with the current code, and prints the ratio current / baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from common import ROOT, clean_env, code_roots, log, pipeline_pid, status_kb, wait_or_kill

sys.path.insert(0, str(ROOT))
from tests.support.serve_process import free_port

STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile")
FIELDS = (*STATUS_FIELDS, "Pss")  # Pss: from smaps_rollup

#: run by ``python -c`` for --floor: imports what argv[1] names, prints VmRSS and Pss in KiB
#: (its own few lines of parsing, not common.status_kb: importing bench/common would add its
#: imports to the floor it measures)
_FLOOR_PROBE = """
import sys
if sys.argv[1] in ("asyncio", "pydantic"):
    import asyncio
if sys.argv[1] == "pydantic":
    import pydantic
    class Model(pydantic.BaseModel):
        field: int
def kib(path, name):
    for line in open(path):
        if line.startswith(name + ":"):
            return int(line.split()[1])
print(kib("/proc/self/status", "VmRSS"), kib("/proc/self/smaps_rollup", "Pss"))
"""
FLOOR_STEPS = {
    "interpreter": "python alone",
    "asyncio": "+ asyncio (with ssl)",
    "pydantic": "+ pydantic, one model",
}


def memory(pid: int) -> dict[str, float]:
    """``FIELDS`` of ``pid`` in MiB."""
    kib = status_kb(pid, STATUS_FIELDS) | status_kb(pid, ("Pss",), "smaps_rollup")
    return {name: kib[name] / 1024 for name in FIELDS if name in kib}


def floor(python: str, repeats: int) -> dict[str, dict[str, float]]:
    """Median VmRSS and Pss in MiB of a fresh ``python`` at each of :data:`FLOOR_STEPS`."""
    found: dict[str, dict[str, float]] = {}
    for step in FLOOR_STEPS:
        runs = []
        for _ in range(repeats):
            out = subprocess.run([python, "-c", _FLOOR_PROBE, step], env=clean_env(),
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
            rss, pss = (int(v) / 1024 for v in out.split())
            runs.append((rss, pss))
        found[step] = {
            "VmRSS": statistics.median(r for r, _ in runs),
            "Pss": statistics.median(p for _, p in runs),
        }
    return found


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return int(answer.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def measure(python: str, code_root: Path, settle: float) -> dict[str, Any]:
    admin = free_port()
    with tempfile.TemporaryDirectory(prefix="otelbridge-rss-") as state:
        env = clean_env(
            code_root=code_root,
            OTELBRIDGE_WEBHOOK_SECRET="a-webhook-secret-of-32-characters!",
            OTELBRIDGE_STATE_DIR=state,
            OTELBRIDGE_LISTEN_PORT=str(free_port()),
            OTELBRIDGE_ADMIN_PORT=str(admin),
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        )
        proc = subprocess.Popen(
            [python, "-m", "otelbridge", "serve"],
            env=env, cwd=state, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not healthy(f"http://127.0.0.1:{admin}/healthz"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"serve did not come up (exit status {proc.poll()})")
                time.sleep(0.1)
            time.sleep(settle)
            webhook, child = memory(proc.pid), memory(pipeline_pid(proc.pid))
        finally:
            proc.send_signal(signal.SIGTERM)
            wait_or_kill(proc, 30)
    return {
        "webhook": webhook,
        "pipeline": child,
        "total": webhook["VmRSS"] + child["VmRSS"],
        "pss_total": webhook["Pss"] + child["Pss"],
    }


def image_python(venv: Path) -> str:
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"making {venv} from requirements/image.txt")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--require-hashes", "-r",
             str(ROOT / "requirements" / "image.txt")],
            check=True,
        )  # fmt: skip
    return str(python)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="a git revision to compare against, in the same run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-venv", type=Path, help="run with a venv of requirements/image.txt")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds idle before reading")
    parser.add_argument("--floor", action="store_true", help="also measure what any process holds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    python = image_python(args.image_venv) if args.image_venv else sys.executable
    runs: dict[str, list[dict[str, Any]]] = {}
    with code_roots(args.baseline, "otelbridge-rss-code-") as codes:
        for _ in range(args.repeats):
            for name, root in codes.items():
                run = measure(python, root, args.settle)
                log(f"{name}: {run['webhook']['VmRSS']:.1f} + {run['pipeline']['VmRSS']:.1f} = "
                    f"{run['total']:.1f} MiB")  # fmt: skip
                runs.setdefault(name, []).append(run)
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "python": python,
        "results": {},
    }
    for name, results in runs.items():
        report["results"][name] = {
            process: {f: statistics.median(r[process][f] for r in results) for f in FIELDS}
            for process in ("webhook", "pipeline")
        } | {
            "total": statistics.median(r["total"] for r in results),
            "pss_total": statistics.median(r["pss_total"] for r in results),
            "runs": results,
        }
    if args.floor:
        report["floor"] = floor(python, args.repeats)
    if args.baseline:
        report["ratio"] = report["results"]["current"]["total"] / report["results"]["baseline"]["total"]
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"\n{report['machine']}; {python}; medians of {args.repeats}, MiB")
    for name, result in report["results"].items():
        parts = "; ".join(
            f"{process} {result[process]['VmRSS']:.1f} (anon {result[process]['RssAnon']:.1f}, "
            f"file {result[process]['RssFile']:.1f}, PSS {result[process]['Pss']:.1f})"
            for process in ("webhook", "pipeline")
        )
        print(f"  {name:<9} total {result['total']:.1f} (PSS {result['pss_total']:.1f}): {parts}")
    if "ratio" in report:
        print(f"  current is {report['ratio']:.2f}x the baseline (goal: a total <= 80 MB)")
    if "floor" in report:
        print("  floor of any one process, RSS (PSS):")
        for step, label in FLOOR_STEPS.items():
            found = report["floor"][step]
            print(f"    {label:<24} {found['VmRSS']:5.1f} ({found['Pss']:.1f})")
        last = report["floor"]["pydantic"]
        print(f"    two processes            {2 * last['VmRSS']:5.1f} ({2 * last['Pss']:.1f})")


if __name__ == "__main__":
    main()
