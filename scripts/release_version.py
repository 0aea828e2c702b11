#!/usr/bin/env python3
"""Check that a release tag agrees with every version in the repository; print the version.

    scripts/release_version.py v0.2.0             # or refs/tags/v0.2.0
    scripts/release_version.py v0.2.0 --repo DIR  # another checkout (the tests use copies)

The tag must be ``vX.Y.Z`` and X.Y.Z must equal, all of them:
  - ``__version__`` in otelbridge/__init__.py (the Python package's version, pyproject reads it);
  - ``version`` and ``appVersion`` in deploy/helm/otelbridge/Chart.yaml (the chart, and the image
    tag the chart pulls by default);
  - a dated ``## [X.Y.Z] - YYYY-MM-DD`` section of CHANGELOG.md that is not empty (the release's
    notes, scripts/changelog_section.py).
On success prints X.Y.Z alone (the release workflow passes it to every job); otherwise exits 1
and lists every disagreement, so the workflow stops before anything is published. Plain X.Y.Z
only: Helm wants SemVer and Python PEP 440, and they spell pre-releases differently.
The files are read as text (nothing is imported), standard library only.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

# scripts/ is sys.path[0] when this file runs as a script.
from changelog_section import ChangelogError, section

REPO = Path(__file__).resolve().parents[1]
PACKAGE_INIT = Path("otelbridge/__init__.py")
CHART = Path("deploy/helm/otelbridge/Chart.yaml")
CHANGELOG = Path("CHANGELOG.md")
TAG = re.compile(r"^(?:refs/tags/)?v(?P<version>\d+\.\d+\.\d+)$")
PY_VERSION = re.compile(r"""^__version__\s*=\s*["'](?P<value>[^"']+)["']\s*$""", re.MULTILINE)


def _chart_field(text: str, key: str) -> str | None:
    """A top-level scalar of Chart.yaml, quoted or not."""
    match = re.search(rf"""^{key}:\s*["']?(?P<value>[^"'\s#]+)["']?\s*(?:#.*)?$""", text, re.MULTILINE)
    return match["value"] if match else None


def problems(tag: str, repo: Path = REPO) -> tuple[str, list[str]]:
    """The tag's version and the list of disagreements (empty: releasable)."""
    match = TAG.match(tag)
    if not match:
        return "", [f"tag {tag!r} is not vX.Y.Z"]
    version = match["version"]
    found: list[str] = []

    init = (repo / PACKAGE_INIT).read_text(encoding="utf-8")
    py = PY_VERSION.search(init)
    if py is None or py["value"] != version:
        found.append(
            f"{PACKAGE_INIT}: __version__ is {py['value'] if py else None!r}, the tag says {version!r}"
        )

    chart = (repo / CHART).read_text(encoding="utf-8")
    for key in ("version", "appVersion"):
        value = _chart_field(chart, key)
        if value != version:
            found.append(f"{CHART}: {key} is {value!r}, the tag says {version!r}")

    try:
        section((repo / CHANGELOG).read_text(encoding="utf-8"), version)
    except ChangelogError as error:
        found.append(f"{CHANGELOG}: {error}")
    return version, found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("tag", help="vX.Y.Z (GITHUB_REF_NAME), or refs/tags/vX.Y.Z")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout to read (default: this one)")
    args = parser.parse_args(argv)
    version, found = problems(args.tag, args.repo)
    if found:
        print(f"release_version: {args.tag} cannot be released:", file=sys.stderr)
        for problem in found:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
