#!/usr/bin/env python3
"""Write a CycloneDX SBOM (JSON) of otelbridge and every Python package it runs with.

    scripts/sbom.py [--output FILE]
        the package: a fresh virtualenv gets requirements/image.txt (hash-checked, wheels only)
        and this checkout (--no-deps), exactly as the image's build stage makes its venv, and the
        SBOM describes that venv (default FILE: otelbridge.cdx.json)
    scripts/sbom.py --python /opt/otelbridge/bin/python --output /opt/otelbridge/sbom.cdx.json
        an environment that exists already: the image's build stage runs this for the SBOM it
        ships; any environment with otelbridge installed works (a development one lists the
        test tools as well)

The root component is otelbridge (from pyproject.toml, with the version the environment holds);
it depends on the pinned versions of pyproject.toml's dependencies. The Python that runs this
script needs cyclonedx-bom (`pip install -e '.[test]'`, or requirements/build-tools.txt).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "image.txt"
PACKAGE = "otelbridge"


def fresh_environment(directory: Path) -> Path:
    """A virtualenv in ``directory`` with the lock and this checkout installed as the image has
    them (pip and setuptools removed afterwards); its Python."""
    venv.create(directory, with_pip=True)
    python = directory / "bin" / "python"
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(  # noqa: S603 (fixed arguments)
        [*pip, "install", "--require-hashes", "--only-binary=:all:", "-r", str(LOCK)], check=True
    )
    # Built from a copy of what the image's build context holds, so that nothing (build/,
    # *.egg-info) is written into the checkout.
    source = directory.parent / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / PACKAGE, source / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([*pip, "install", "--no-deps", str(source)], check=True)  # noqa: S603
    subprocess.run([*pip, "uninstall", "--yes", "pip", "setuptools", "wheel"], check=True)  # noqa: S603
    return python


def installed_version(python: Path) -> str:
    """The version of otelbridge that ``python``'s environment holds (pyproject.toml's is dynamic)."""
    result = subprocess.run(  # noqa: S603 (fixed arguments)
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({PACKAGE!r}))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def write_sbom(python: Path, output: Path, *, validate: bool = True) -> None:
    """Run cyclonedx-py (reproducible: no random serial number, no timestamp unless
    SOURCE_DATE_EPOCH says one; validated against the CycloneDX schema unless told not to) on
    ``python``'s environment; name the root's version."""
    subprocess.run(  # noqa: S603 (fixed arguments)
        [
            sys.executable,
            "-m",
            "cyclonedx_py",
            "environment",
            "--pyproject",
            str(REPO / "pyproject.toml"),
            "--mc-type",
            "application",
            "--output-reproducible",
            "--output-format",
            "JSON",
            "--output-file",
            str(output),
            "--validate" if validate else "--no-validate",
            str(python),
        ],
        check=True,
    )
    bom = json.loads(output.read_text(encoding="utf-8"))
    version = installed_version(python)
    root = bom["metadata"]["component"]
    root["version"] = version
    root["purl"] = f"pkg:pypi/{PACKAGE}@{version}"
    output.write_text(json.dumps(bom, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--python", type=Path, help="an existing environment's Python (default: a fresh venv)"
    )
    parser.add_argument("--output", "-o", type=Path, default=Path(f"{PACKAGE}.cdx.json"))
    parser.add_argument(
        "--no-validate",
        dest="validate",
        action="store_false",
        help="skip cyclonedx-py's schema validation (slow for a large environment)",
    )
    args = parser.parse_args(argv)
    output = args.output.resolve()
    if args.python is not None:
        write_sbom(args.python, output, validate=args.validate)
    else:
        with tempfile.TemporaryDirectory(prefix="otelbridge-sbom-") as tmp:
            write_sbom(fresh_environment(Path(tmp) / "venv"), output, validate=args.validate)
    print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
