"""Release automation (issue 21; RELEASING.md): .github/workflows/ci.yml runs .ci/run, and
.github/workflows/release.yml, on a tag vX.Y.Z, publishes the signed multi-arch image, the chart
as an OCI artifact, the package to PyPI by trusted publishing and a GitHub release whose notes
are the CHANGELOG's section; the chart's default image is that published image.

All offline: the workflows are read as YAML (the linters, check-jsonschema and zizmor, and the
pinning of every action by commit run over every workflow in tests/deploy/test_supply_chain.py),
and the two scripts the release runs, scripts/release_version.py and
scripts/changelog_section.py, are run on copies of the files they read."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import helm_python as helm
import pytest
import yaml

from otelbridge import __version__
from tests.deploy.chart import CHART_DIR, render

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"
SCRIPTS = REPO / "scripts"
CHART_YAML = CHART_DIR / "Chart.yaml"
VALUES_YAML = CHART_DIR / "values.yaml"


def _script(name: str) -> ModuleType:
    """scripts/NAME.py as a module (release_version imports changelog_section by name, as it
    does when run as a script with scripts/ first on sys.path)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


changelog_section = _script("changelog_section")
release_version = _script("release_version")


def workflow(name: str) -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    return data


def steps_text(job: dict[str, Any]) -> str:
    """The job's shell scripts and the template expressions handed to them, one text."""
    parts: list[str] = []
    for step in job["steps"]:
        parts.extend(str(value) for value in step.get("env", {}).values())
        parts.append(step.get("run", ""))
    return "\n".join(parts)


def uses(job: dict[str, Any]) -> list[str]:
    return [step["uses"].split("@")[0] for step in job["steps"] if "uses" in step]


# --- ci.yml ----------------------------------------------------------------------------------


def test_ci_runs_dot_ci_run_as_root_on_pull_requests_and_main() -> None:
    ci = workflow("ci.yml")
    triggers = ci[True]  # YAML 1.1 reads the key `on` as True
    assert "pull_request" in triggers
    assert triggers["push"]["branches"] == ["main"]
    assert ci["permissions"] == {"contents": "read"}
    runs = [step.get("run", "") for job in ci["jobs"].values() for step in job["steps"]]
    (ci_run,) = [run for run in runs if ".ci/run" in run]
    # root (apt-get, /etc/containers, initdb as postgres), with setup-python's Python on PATH
    assert re.fullmatch(r'sudo (--preserve-env=\S+ )?env "PATH=\$PATH" bash \.ci/run', ci_run), ci_run
    for job in ci["jobs"].values():
        assert job["permissions"] == {"contents": "read"}


# --- release.yml -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def release() -> dict[Any, Any]:
    return workflow("release.yml")


def test_release_runs_on_version_tags_with_no_default_permissions(release: dict[Any, Any]) -> None:
    assert release[True] == {"push": {"tags": ["v*"]}}
    assert release["permissions"] == {}
    for name, job in release["jobs"].items():
        assert "permissions" in job, f"{name} has no permissions of its own"


def test_release_checks_the_versions_before_anything_is_published(release: dict[Any, Any]) -> None:
    jobs = release["jobs"]
    check = jobs["version"]
    assert "scripts/release_version.py" in steps_text(check)
    assert "github.ref_name" in steps_text(check)
    assert check["outputs"]["version"] == "${{ steps.check.outputs.version }}"
    for name, job in jobs.items():
        if name != "version":
            assert "version" in job["needs"], f"{name} does not wait for the version check"


def test_release_pushes_a_signed_multi_arch_image_to_ghcr(release: dict[Any, Any]) -> None:
    job = release["jobs"]["image"]
    assert job["permissions"] == {"contents": "read", "packages": "write", "id-token": "write"}
    assert uses(job) == [
        "actions/checkout",
        "docker/setup-qemu-action",
        "docker/setup-buildx-action",
        "docker/login-action",
        "docker/build-push-action",
        "sigstore/cosign-installer",
    ]
    (name_step,) = [step for step in job["steps"] if step.get("id") == "name"]
    assert job["env"]["OWNER"] == "${{ github.repository_owner }}"
    assert "ghcr.io/${OWNER,,}/otelbridge" in name_step["run"]
    (build,) = [step for step in job["steps"] if step.get("id") == "build"]
    options = build["with"]
    assert options["platforms"] == "linux/amd64,linux/arm64"
    assert options["push"] is True
    assert options["sbom"] is True
    assert options["provenance"] == "mode=max"
    assert options["tags"] == "${{ steps.name.outputs.image }}:${{ needs.version.outputs.version }}"
    assert "VERSION=${{ needs.version.outputs.version }}" in options["build-args"].splitlines()
    # the Dockerfile's label reads that build-arg
    assert 'org.opencontainers.image.version="${VERSION}"' in (REPO / "Dockerfile").read_text()
    (sign,) = [step for step in job["steps"] if "cosign sign" in step.get("run", "")]
    assert sign["run"] == 'cosign sign --yes "${IMAGE}@${DIGEST}"'
    assert sign["env"]["DIGEST"] == "${{ steps.build.outputs.digest }}"


def test_release_pushes_the_chart_to_ghcr_as_an_oci_artifact(release: dict[Any, Any]) -> None:
    job = release["jobs"]["chart"]
    assert job["permissions"] == {"contents": "read", "packages": "write", "id-token": "write"}
    text = steps_text(job)
    assert 'helm package deploy/helm/otelbridge --version "$VERSION" --app-version "$VERSION"' in text
    assert "helm registry login ghcr.io" in text
    assert 'helm push "dist/otelbridge-${VERSION}.tgz" "oci://ghcr.io/${OWNER,,}/charts"' in text
    assert 'cosign sign --yes "ghcr.io/${OWNER,,}/charts/otelbridge@${DIGEST}"' in text


def test_release_publishes_to_pypi_by_trusted_publishing_only(release: dict[Any, Any]) -> None:
    build = release["jobs"]["python-build"]
    assert "python -m build" in steps_text(build)
    job = release["jobs"]["pypi"]
    assert job["environment"]["name"] == "pypi"
    assert job["permissions"] == {"id-token": "write"}
    (publish,) = [step for step in job["steps"] if "pypa/gh-action-pypi-publish@" in step.get("uses", "")]
    # no token or password: the OIDC token is exchanged for a short-lived one
    assert not set(publish.get("with", {})) & {"password", "user"}
    assert "secrets." not in yaml.safe_dump(job)
    # the upload waits for the image and the chart: it cannot be taken back
    assert {"image", "chart", "python-build"} <= set(job["needs"])


def test_release_creates_the_github_release_from_the_changelog(release: dict[Any, Any]) -> None:
    job = release["jobs"]["github-release"]
    assert job["permissions"] == {"contents": "write"}
    text = steps_text(job)
    assert 'python scripts/changelog_section.py "$VERSION" > notes.md' in text
    assert re.search(r'gh release create "\$TAG" (.|\\\n)*--notes-file notes\.md', text)
    (create,) = [step for step in job["steps"] if "gh release create" in step.get("run", "")]
    assert create["env"]["GH_TOKEN"] == "${{ github.token }}"


def test_only_the_publishing_jobs_may_write(release: dict[Any, Any]) -> None:
    writers = {
        name: {scope for scope, access in job["permissions"].items() if access == "write"}
        for name, job in release["jobs"].items()
    }
    assert writers == {
        "version": set(),
        "image": {"packages", "id-token"},
        "chart": {"packages", "id-token"},
        "python-build": set(),
        "pypi": {"id-token"},
        "github-release": {"contents"},
    }


# --- the chart's default image ---------------------------------------------------------------


def test_chart_version_and_app_version_are_the_package_version() -> None:
    chart = yaml.safe_load(CHART_YAML.read_text(encoding="utf-8"))
    assert chart["version"] == __version__
    assert chart["appVersion"] == __version__


def test_chart_pulls_the_published_image_tagged_with_its_app_version() -> None:
    chart = yaml.safe_load(CHART_YAML.read_text(encoding="utf-8"))
    owner = re.fullmatch(r"https://github\.com/([^/]+)/otelbridge", chart["home"])
    assert owner, chart["home"]
    values = yaml.safe_load(VALUES_YAML.read_text(encoding="utf-8"))
    # the image release.yml pushes for the repository the chart comes from
    assert values["image"]["repository"] == f"ghcr.io/{owner[1].lower()}/otelbridge"
    assert values["image"]["tag"] == ""
    assert values["image"]["digest"] == ""
    assert render().container["image"] == f"ghcr.io/{owner[1].lower()}/otelbridge:{__version__}"


def test_chart_packaged_as_the_release_does_carries_the_version(tmp_path: Path) -> None:
    """`helm package --version X --app-version X`, as release.yml runs it."""
    archive = Path(helm.package(CHART_DIR, destination=tmp_path, version="9.8.7", app_version="9.8.7"))
    assert archive.name == "otelbridge-9.8.7.tgz"
    with tarfile.open(archive) as tar:
        member = tar.extractfile("otelbridge/Chart.yaml")
        assert member is not None
        packaged = yaml.safe_load(member.read())
    assert (packaged["version"], packaged["appVersion"]) == ("9.8.7", "9.8.7")


# --- scripts/changelog_section.py ------------------------------------------------------------

CHANGELOG = """\
# Changelog

Intro, with a [link](https://example.com).

## [Unreleased]

### Added
- Not released yet.

## [0.2.0] - 2026-02-01

### Added
- Second release.

```text
## not a heading: inside a fence
```

### Fixed
- A bug.

## [0.1.1] - 2026-01-15 [YANKED]

### Fixed
- Withdrawn.

## [0.1.0] - 2026-01-01

### Added
- First release.

[Unreleased]: https://github.com/otelbridge/otelbridge/compare/v0.2.0...HEAD
[0.2.0]: https://github.com/otelbridge/otelbridge/compare/v0.1.0...v0.2.0
[0.1.0]: https://github.com/otelbridge/otelbridge/releases/tag/v0.1.0
"""


def test_changelog_section_is_the_body_up_to_the_next_release() -> None:
    assert changelog_section.section(CHANGELOG, "0.2.0") == (
        "### Added\n- Second release.\n\n```text\n## not a heading: inside a fence\n```\n\n"
        "### Fixed\n- A bug.\n"
    )
    assert changelog_section.section(CHANGELOG, "v0.2.0") == changelog_section.section(CHANGELOG, "0.2.0")
    assert changelog_section.section(CHANGELOG, "0.1.1") == "### Fixed\n- Withdrawn.\n"


def test_changelog_section_of_the_last_release_leaves_the_link_definitions_out() -> None:
    assert changelog_section.section(CHANGELOG, "0.1.0") == "### Added\n- First release.\n"


@pytest.mark.parametrize("version", ["Unreleased", "0.3.0", "0.2", "2026-02-01"])
def test_changelog_section_refuses_what_is_not_a_dated_release(version: str) -> None:
    with pytest.raises(changelog_section.ChangelogError, match="no '## \\["):
        changelog_section.section(CHANGELOG, version)


def test_changelog_section_refuses_an_empty_section() -> None:
    with pytest.raises(changelog_section.ChangelogError, match="empty"):
        changelog_section.section("## [1.0.0] - 2026-03-01\n\n## [0.9.0] - 2026-02-01\n- x\n", "1.0.0")


def test_changelog_section_command_prints_the_notes_or_fails(tmp_path: Path) -> None:
    path = tmp_path / "CHANGELOG.md"
    path.write_text(CHANGELOG, encoding="utf-8")
    command = [sys.executable, str(SCRIPTS / "changelog_section.py"), "--changelog", str(path)]
    found = subprocess.run([*command, "v0.1.0"], capture_output=True, text=True, check=False, timeout=60)
    assert (found.returncode, found.stdout, found.stderr) == (0, "### Added\n- First release.\n", "")
    missing = subprocess.run([*command, "9.9.9"], capture_output=True, text=True, check=False, timeout=60)
    assert (missing.returncode, missing.stdout) == (1, "")
    assert "rename '## [Unreleased]'" in missing.stderr


def test_the_repository_changelog_reads_as_keep_a_changelog() -> None:
    text = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "\n## [Unreleased]\n" in text
    released = [m["version"] for line in text.splitlines() if (m := changelog_section.HEADING.match(line))]
    for version in released:
        assert changelog_section.section(text, version).strip()


# --- scripts/release_version.py --------------------------------------------------------------


def release_repo(tmp_path: Path, *, package: str = "0.2.0", chart: str = "0.2.0", app: str = "0.2.0") -> Path:
    """A checkout with just the files release_version.py reads."""
    (tmp_path / "otelbridge").mkdir()
    (tmp_path / "otelbridge" / "__init__.py").write_text(
        f'"""otelbridge."""\n\n__version__ = "{package}"\n', encoding="utf-8"
    )
    chart_dir = tmp_path / "deploy" / "helm" / "otelbridge"
    chart_dir.mkdir(parents=True)
    real = CHART_YAML.read_text(encoding="utf-8")
    real = re.sub(r"(?m)^version: .*$", f"version: {chart}", real)
    real = re.sub(r"(?m)^appVersion: .*$", f'appVersion: "{app}"', real)
    (chart_dir / "Chart.yaml").write_text(real, encoding="utf-8")
    (tmp_path / "CHANGELOG.md").write_text(CHANGELOG, encoding="utf-8")
    return tmp_path


def run_release_version(tag: str, repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "release_version.py"), tag, "--repo", str(repo)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize("tag", ["v0.2.0", "refs/tags/v0.2.0"])
def test_release_version_prints_the_version_when_everything_agrees(tmp_path: Path, tag: str) -> None:
    result = run_release_version(tag, release_repo(tmp_path))
    assert (result.returncode, result.stdout, result.stderr) == (0, "0.2.0\n", "")


@pytest.mark.parametrize(
    ("versions", "tag", "complaints"),
    [
        ({"package": "0.1.9"}, "v0.2.0", ["otelbridge/__init__.py: __version__ is '0.1.9'"]),
        ({"chart": "0.2.1"}, "v0.2.0", ["Chart.yaml: version is '0.2.1'"]),
        ({"app": "0.1.0"}, "v0.2.0", ["Chart.yaml: appVersion is '0.1.0'"]),
        (
            {"package": "0.3.0", "chart": "0.3.0", "app": "0.3.0"},
            "v0.3.0",
            ["CHANGELOG.md: no '## [0.3.0] - YYYY-MM-DD' heading"],
        ),
        (
            {"package": "0.1.9", "app": "0.2.1"},
            "v0.2.0",
            ["__version__ is '0.1.9'", "appVersion is '0.2.1'"],
        ),
        ({}, "0.2.0", ["tag '0.2.0' is not vX.Y.Z"]),
        ({}, "v0.2", ["tag 'v0.2' is not vX.Y.Z"]),
        ({}, "v0.2.0rc1", ["tag 'v0.2.0rc1' is not vX.Y.Z"]),
    ],
)
def test_release_version_fails_naming_every_disagreement(
    tmp_path: Path, versions: dict[str, str], tag: str, complaints: list[str]
) -> None:
    result = run_release_version(tag, release_repo(tmp_path, **versions))
    assert result.returncode == 1
    assert result.stdout == ""
    for complaint in complaints:
        assert complaint in result.stderr
    assert result.stderr.count("\n  - ") == len(complaints)


def test_this_checkout_agrees_with_its_own_tag_but_for_the_changelog() -> None:
    """The package, the chart and its appVersion agree now; the CHANGELOG gets its dated section
    when a release is cut (RELEASING.md), so that one complaint alone may stand until then."""
    version, problems = release_version.problems(f"v{__version__}")
    assert version == __version__
    assert all(problem.startswith("CHANGELOG.md: ") for problem in problems), problems
