#!/usr/bin/env python3
"""Print one released version's section of CHANGELOG.md: the body of a GitHub release.

    scripts/changelog_section.py 0.2.0            # or v0.2.0
    scripts/changelog_section.py 0.2.0 --changelog path/to/CHANGELOG.md

CHANGELOG.md follows Keep a Changelog (https://keepachangelog.com/en/1.1.0/): a release is a
heading ``## [X.Y.Z] - YYYY-MM-DD`` (optionally followed by ``[YANKED]``), and its section runs
to the next ``## `` heading. The heading itself is left out (the release has its own title), and
so are the link reference definitions (``[0.2.0]: https://…``) that close the file. ``## [Unreleased]``
has no date, so it is never a release. Exits 1, saying why, when the version has no dated
section or the section is empty: the release workflow stops there rather than publish a release
without notes. Standard library only.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

CHANGELOG = Path(__file__).resolve().parents[1] / "CHANGELOG.md"
HEADING = re.compile(r"^## \[(?P<version>[^\]]+)\] - (?P<date>\d{4}-\d{2}-\d{2})(?: \[YANKED\])?\s*$")
LINK_DEFINITION = re.compile(r"^\[[^\]]+\]:\s+\S+")
FENCE = re.compile(r"^(```|~~~)")


class ChangelogError(ValueError):
    """The changelog has no usable section for the version asked for."""


def section(text: str, version: str) -> str:
    """The body of ``## [version] - date`` in ``text`` (a Keep a Changelog file), stripped."""
    version = version.removeprefix("v")
    lines = text.splitlines()
    start: int | None = None
    end = len(lines)
    in_fence = False
    for index, line in enumerate(lines):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence or not line.startswith("## "):
            continue
        if start is not None:
            end = index
            break
        heading = HEADING.match(line)
        if heading and heading["version"] == version:
            start = index + 1
    if start is None:
        raise ChangelogError(
            f"no '## [{version}] - YYYY-MM-DD' heading in the changelog: "
            f"rename '## [Unreleased]' to it (and open a new Unreleased section) before tagging"
        )
    body = lines[start:end]
    while body and (not body[-1].strip() or LINK_DEFINITION.match(body[-1])):
        body.pop()
    notes = "\n".join(body).strip()
    if not notes:
        raise ChangelogError(f"the changelog's section for {version} is empty")
    return notes + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("version", help="X.Y.Z, or the tag vX.Y.Z")
    parser.add_argument("--changelog", type=Path, default=CHANGELOG, help="default: the repository's")
    args = parser.parse_args(argv)
    try:
        notes = section(args.changelog.read_text(encoding="utf-8"), args.version)
    except (ChangelogError, OSError) as error:
        print(f"changelog_section: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
