"""The supply chain (issue 19; docs/supply-chain.md): the image installs its dependencies from a
lock with hashes, wheels only, for linux/amd64 and linux/arm64; its base is pinned by digest;
an SBOM (CycloneDX JSON) is written for the package and shipped in the image; pip-audit --strict
runs in a workflow whose actions are pinned by commit SHA, and Dependabot keeps all of it fresh.

What needs nothing but this checkout runs offline. The wheel coverage asks PyPI's simple index
(PEP 691 JSON) which file each locked hash belongs to, and is skipped when pypi.org cannot be
reached. The image itself (the SBOM inside it, what its virtualenv holds) is checked by
tests/deploy/test_image_supply_chain.py (pytest -m container)."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

import otelbridge

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
DOCKERFILE = REPO / "Dockerfile"
IMAGE_LOCK = REPO / "requirements" / "image.txt"
TOOLS_LOCK = REPO / "requirements" / "build-tools.txt"
TOOLS_INPUT = REPO / "requirements" / "build-tools.in"
SBOM_SCRIPT = REPO / "scripts" / "sbom.py"
WORKFLOWS = REPO / ".github" / "workflows"
DEPENDABOT = REPO / ".github" / "dependabot.yml"
IMAGE_SBOM = "/opt/otelbridge/sbom.cdx.json"
ROOT_VIA = "otelbridge (pyproject.toml)"
# The image's platforms, and the Pythons it is built on: python:3.12-slim, and Debian bookworm's
# 3.11 (the container tests' base). glibc 2.36 is bookworm's, the older of the two bases.
ARCHES = ("x86_64", "aarch64")
PYTHONS = ((3, 11), (3, 12))
GLIBC_MINOR = 36


# --- the locks -------------------------------------------------------------------------------


@dataclass
class Pin:
    name: str  # canonical
    version: Version
    marker: Marker | None
    hashes: set[str] = field(default_factory=set)
    via: set[str] = field(default_factory=set)


@dataclass
class Lock:
    command: str  # the command in the header that regenerates it
    pins: dict[str, Pin]


def parse_lock(path: Path) -> Lock:
    """A uv- or pip-compile-generated requirements file: every requirement with its hashes and
    its ``# via`` annotations. Fails on anything that is not ``name==version`` (a range, a URL,
    an editable), which --require-hashes would refuse anyway."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = [line for line in lines[:5] if line.startswith("#    ")]
    assert header, f"{path.name}: no header naming the command that regenerates it"
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    in_via = False
    logical = ""
    for line in lines:
        if line.startswith("#") or not line.strip():
            continue
        stripped = line.strip()
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            assert current is not None and not logical, f"{path.name}: a comment ends {logical!r}"
            if text == "via":
                in_via = True
            elif text.startswith("via "):
                current.via.add(text.removeprefix("via "))
                in_via = False
            elif in_via:
                current.via.add(text)
            continue
        in_via = False
        logical += stripped.removesuffix("\\").strip() + " "
        if stripped.endswith("\\"):
            continue
        parts = logical.split()
        logical = ""
        if parts[0].startswith("--hash="):
            assert current is not None
            current.hashes.update(p.removeprefix("--hash=") for p in parts)
            continue
        spec = " ".join(p for p in parts if not p.startswith("--hash="))
        requirement = Requirement(spec)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{path.name}: {spec!r} is not pinned with =="
        current = Pin(
            canonicalize_name(requirement.name),
            Version(specifier.version),
            requirement.marker,
            {p.removeprefix("--hash=") for p in parts if p.startswith("--hash=")},
        )
        assert current.name not in pins, f"{path.name}: {current.name} pinned twice"
        pins[current.name] = current
    return Lock(header[0].removeprefix("#").strip(), pins)


def image_requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["postgres"]]


def extra_names(requirement: Requirement) -> set[str]:
    """The packages ``requirement``'s extras add (``psycopg[binary]`` -> psycopg-binary), from
    the installed distribution's metadata (the test extra installs the postgres one)."""
    names: set[str] = set()
    for extra in requirement.extras:
        for line in importlib.metadata.requires(requirement.name) or []:
            dependency = Requirement(line)
            if dependency.marker is not None and dependency.marker.evaluate({"extra": extra}):
                names.add(canonicalize_name(dependency.name))
    return names


def hashes_ok(pin: Pin) -> bool:
    return bool(pin.hashes) and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes)


def test_the_image_lock_pins_every_dependency_of_pyproject_within_its_range_with_hashes() -> None:
    lock = parse_lock(IMAGE_LOCK)
    for requirement in image_requirements():
        name = canonicalize_name(requirement.name)
        assert name in lock.pins, f"{requirement} (pyproject.toml) is not in requirements/image.txt"
        pin = lock.pins[name]
        # prereleases: opentelemetry-exporter-prometheus is released as 0.x betas only.
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"requirements/image.txt pins {name}=={pin.version}, outside pyproject.toml's {requirement}"
        )
        assert ROOT_VIA in pin.via, f"{name}: the lock does not know it as a direct dependency"
        for extra_name in extra_names(requirement):
            assert extra_name in lock.pins, f"{extra_name} ({requirement}) is not in requirements/image.txt"
    for pin in lock.pins.values():
        assert hashes_ok(pin), f"{pin.name}=={pin.version} has no sha256 hash"
        assert pin.via, f"{pin.name}: no '# via' annotation (stale, or not generated)"


def test_the_image_lock_holds_nothing_pyproject_no_longer_asks_for() -> None:
    """A dependency removed from pyproject.toml must leave the lock too: every pin is either a
    direct dependency or comes in through another pin."""
    lock = parse_lock(IMAGE_LOCK)
    declared = {canonicalize_name(r.name) for r in image_requirements()}
    for pin in lock.pins.values():
        if ROOT_VIA in pin.via:
            assert pin.name in declared, f"{pin.name} is locked as direct but pyproject.toml lacks it"
        parents = {canonicalize_name(v) for v in pin.via if v != ROOT_VIA}
        assert pin.name in declared or parents & set(lock.pins), f"{pin.name}: nothing locked needs it"


def test_the_locks_regenerate_from_their_inputs_for_every_supported_python_and_platform() -> None:
    floor = re.fullmatch(r">=\s*(\d+\.\d+)", PYPROJECT["project"]["requires-python"])
    assert floor, PYPROJECT["project"]["requires-python"]
    for path, inputs in [
        (IMAGE_LOCK, ["pyproject.toml", "--extra postgres"]),
        (TOOLS_LOCK, ["requirements/build-tools.in"]),
    ]:
        command = parse_lock(path).command
        assert command.startswith(("uv pip compile ", "pip-compile ")), command
        for option in [*inputs, "--generate-hashes", f"-o {path.relative_to(REPO)}"]:
            assert option in command, f"{path.name}: {option!r} missing from {command!r}"
        # One lock for every platform (amd64 and arm64 alike), resolved for the oldest Python the
        # project supports: --universal resolves for all of them at once, markers included.
        assert "--universal" in command, command
        assert f"--python-version {floor.group(1)}" in command, command
        assert "--python-platform" not in command, command


def test_the_build_tools_lock_has_what_the_build_stage_runs() -> None:
    lock = parse_lock(TOOLS_LOCK)
    for pin in lock.pins.values():
        assert hashes_ok(pin), f"{pin.name}=={pin.version} has no sha256 hash"
    inputs = [
        Requirement(line)
        for line in TOOLS_INPUT.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    build_system = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    for requirement in inputs + build_system:
        tool = lock.pins.get(canonicalize_name(requirement.name))
        assert tool is not None, f"{requirement} is not in requirements/build-tools.txt"
        assert requirement.specifier.contains(tool.version), f"{tool.name}=={tool.version} vs {requirement}"
    assert "cyclonedx-bom" in lock.pins


def platform_tags(python: tuple[int, int], arch: str) -> set[Tag]:
    """The wheel tags pip accepts for CPython ``python`` on glibc Linux ``arch`` (manylinux up to
    glibc 2.GLIBC_MINOR, and the legacy aliases)."""
    platforms = [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC_MINOR, 4, -1)]
    platforms += [f"manylinux2014_{arch}"]
    if arch == "x86_64":
        platforms += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    abi = f"cp{python[0]}{python[1]}"
    tags = set(cpython_tags(python, abis=[abi, "abi3", "none"], platforms=platforms))
    return tags | set(compatible_tags(python, interpreter=abi, platforms=platforms))


def marker_environment(python: tuple[int, int], arch: str) -> dict[str, str]:
    version = f"{python[0]}.{python[1]}"
    return {
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "platform_machine": arch,
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
        "python_version": version,
        "python_full_version": f"{version}.0",
        "extra": "",
    }


def simple_index_files(client: httpx.Client, name: str) -> list[dict[str, Any]]:
    answer = client.get(
        f"https://pypi.org/simple/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    answer.raise_for_status()
    files: list[dict[str, Any]] = answer.json()["files"]
    return files


@pytest.fixture(scope="module")
def pypi() -> Iterable[httpx.Client]:
    with httpx.Client(timeout=20.0, follow_redirects=True) as client:
        try:
            simple_index_files(client, "pip")
        except httpx.HTTPError as exc:
            pytest.skip(f"PyPI's simple index cannot be reached ({exc!r}); wheel coverage unchecked")
        yield client


@pytest.mark.parametrize("path", [IMAGE_LOCK, TOOLS_LOCK], ids=lambda p: p.name)
def test_every_locked_package_has_a_hashed_wheel_for_linux_amd64_and_arm64(
    path: Path, pypi: httpx.Client
) -> None:
    """``pip install --require-hashes --only-binary=:all:`` must succeed on both platforms of the
    multi-arch image and on both Pythons it is built on: for each, some wheel of each pinned
    version that applies there must carry a hash the lock lists."""
    lock = parse_lock(path)
    missing = []
    for pin in lock.pins.values():
        wheels: dict[str, set[Tag]] = {}
        try:
            entries = simple_index_files(pypi, pin.name)
        except httpx.HTTPError as exc:
            pytest.skip(f"PyPI's simple index failed for {pin.name} ({exc!r}); wheel coverage unchecked")
        for entry in entries:
            filename = entry["filename"]
            if not filename.endswith(".whl") or entry.get("yanked"):
                continue
            try:
                _, version, _, tags = parse_wheel_filename(filename)
            except InvalidWheelFilename:  # an old upload newer packaging refuses (pydantic-0.18-py36+)
                continue
            if version == pin.version and "sha256" in entry["hashes"]:
                wheels[f"sha256:{entry['hashes']['sha256']}"] = set(tags)
        for python in PYTHONS:
            for arch in ARCHES:
                if pin.marker is not None and not pin.marker.evaluate(marker_environment(python, arch)):
                    continue
                accepted = platform_tags(python, arch)
                if not any(tags & accepted for digest, tags in wheels.items() if digest in pin.hashes):
                    missing.append(f"{pin.name}=={pin.version} cp{python[0]}{python[1]} {arch}")
    assert not missing, f"{path.name}: no hashed wheel for {missing}"


# --- the Dockerfile --------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if line.rstrip().endswith("\\"):
            continue
        keyword, _, rest = pending.strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(rest.split())))
        pending = ""
    return instructions


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]]


def dockerfile_stages() -> tuple[dict[str, str], list[Stage]]:
    """The global ARGs' defaults and the stages, in order."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            words = rest.split()
            name = words[words.index("AS") + 1] if "AS" in words else None
            stages.append(Stage(words[0], name, []))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            arg, _, default = rest.partition("=")
            global_args[arg] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return global_args, stages


def test_the_default_base_image_is_pinned_by_digest() -> None:
    """The base both stages use by default is python:3.12-slim by the sha256 digest of its image
    index; ``--build-arg BASE=...`` still replaces it (the container tests' Debian base)."""
    global_args, stages = dockerfile_stages()
    by_name = {stage.name: stage for stage in stages if stage.name}
    default = global_args["BASE"]
    image = by_name[default].image if default in by_name else default
    assert re.fullmatch(r"(docker\.io/library/)?python:3\.12-slim@sha256:[0-9a-f]{64}", image), image
    build, final = stages[-2], stages[-1]
    assert build.name == "build" and build.image == "${BASE}", build
    assert final.image == "${BASE}", final
    # The pinned stage is only a name for the image: nothing runs in it.
    if default in by_name:
        assert by_name[default].instructions == []


def run_commands(stage: Stage) -> list[str]:
    return [
        command.strip()
        for keyword, rest in stage.instructions
        if keyword == "RUN"
        for command in rest.split("&&")
    ]


def test_the_image_installs_from_the_locks_only() -> None:
    _, stages = dockerfile_stages()
    build = next(stage for stage in stages if stage.name == "build")
    installs = [command for command in run_commands(build) if " install " in command]
    assert (
        "/opt/otelbridge/bin/pip install --require-hashes --only-binary=:all: -r requirements/image.txt"
        in (installs)
    )
    for command in installs:
        hashed = re.search(r"--require-hashes --only-binary=:all: -r requirements/[a-z-]+\.txt$", command)
        # otelbridge itself: the wheel just built from this checkout, nothing else pulled in.
        local = re.fullmatch(
            r"/opt/otelbridge/bin/pip install --no-deps /tmp/dist/otelbridge-\*\.whl", command
        )
        assert hashed or local, f"an install that is neither locked nor otelbridge itself: {command}"
    wheel = next(command for command in run_commands(build) if " wheel " in command)
    assert "--no-deps" in wheel and "--no-build-isolation" in wheel, wheel  # setuptools from the lock
    for stage in stages:
        if stage is not build:
            assert not [c for c in run_commands(stage) if "pip" in c], (
                f"pip runs outside the build stage: {stage}"
            )
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    for path in ("requirements/image.txt", "requirements/build-tools.txt", "scripts/sbom.py"):
        assert f"!{path}" in ignored, f".dockerignore keeps {path} out of the build context"


def test_the_image_ships_its_sbom_and_not_the_tool_that_wrote_it() -> None:
    _, stages = dockerfile_stages()
    build, final = stages[-2], stages[-1]
    sbom = [c for c in run_commands(build) if "scripts/sbom.py" in c]
    assert sbom == [
        "/tmp/build-tools/bin/python scripts/sbom.py --python /opt/otelbridge/bin/python"
        f" --output {IMAGE_SBOM}"
    ], sbom
    # Written after pip and setuptools leave the venv, so it lists what the image runs with.
    commands = run_commands(build)
    assert commands.index(sbom[0]) > max(i for i, c in enumerate(commands) if "uninstall" in c)
    copies = [rest for keyword, rest in final.instructions if keyword == "COPY"]
    assert copies == ["--from=build /opt/otelbridge /opt/otelbridge"], copies
    labels = " ".join(rest for keyword, rest in final.instructions if keyword == "LABEL")
    assert f'io.github.otelbridge.sbom="{IMAGE_SBOM}"' in labels, labels


# --- the SBOM --------------------------------------------------------------------------------


def test_the_sbom_script_writes_valid_cyclonedx_with_the_direct_dependencies_and_their_versions(
    tmp_path: Path,
) -> None:
    """scripts/sbom.py on this environment (the image's build stage runs it on its venv; without
    --python it makes a fresh venv from the lock, which needs PyPI)."""
    pytest.importorskip("cyclonedx_py", reason="cyclonedx-bom is in the test extra: pip install -e '.[test]'")
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    output = tmp_path / "otelbridge.cdx.json"
    result = subprocess.run(
        # Validated below, once (cyclonedx-py's own validation of ~250 components takes ~15 s).
        [
            sys.executable,
            str(SBOM_SCRIPT),
            "--python",
            sys.executable,
            "--output",
            str(output),
            "--no-validate",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    text = output.read_text(encoding="utf-8")
    bom = json.loads(text)
    assert bom["bomFormat"] == "CycloneDX"
    error = JsonStrictValidator(SchemaVersion.from_version(bom["specVersion"])).validate_str(text)
    assert error is None, error
    root = bom["metadata"]["component"]
    assert (root["name"], root["version"]) == ("otelbridge", otelbridge.__version__)
    assert root["purl"] == f"pkg:pypi/otelbridge@{otelbridge.__version__}"
    components = {c["bom-ref"]: c for c in bom["components"]}
    depends_on = next(d.get("dependsOn", []) for d in bom["dependencies"] if d["ref"] == root["bom-ref"])
    direct = {canonicalize_name(components[ref]["name"]): components[ref] for ref in depends_on}
    project = PYPROJECT["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in direct, f"{name}: not among otelbridge's dependencies in the SBOM"
        component = direct[name]
        assert component["version"] == importlib.metadata.version(name), component
        assert component["purl"] == f"pkg:pypi/{name}@{component['version']}", component
    # The postgres extra: installed here, so listed (as components, not as the root's own).
    listed = {canonicalize_name(c["name"]): c["version"] for c in components.values()}
    for line in project["optional-dependencies"]["postgres"]:
        name = canonicalize_name(Requirement(line).name)
        assert listed.get(name) == importlib.metadata.version(name), name


# --- pip-audit, Dependabot -------------------------------------------------------------------


def workflow(name: str) -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    return data


def test_the_audit_workflow_runs_pip_audit_strict_on_the_lock_with_least_privilege() -> None:
    audit = workflow("audit.yml")
    triggers = audit[True]  # YAML 1.1 reads the key `on` as True
    assert "schedule" in triggers
    assert {"requirements/**", "pyproject.toml"} <= set(triggers["pull_request"]["paths"])
    assert audit["permissions"] == {"contents": "read"}
    runs = " ".join(step.get("run", "") for job in audit["jobs"].values() for step in job["steps"])
    for lock in ("requirements/image.txt", "requirements/build-tools.txt"):
        assert re.search(rf"pip_audit --strict --require-hashes [^\n]*-r {re.escape(lock)}", runs), runs


def test_every_action_is_pinned_by_commit_and_checkout_keeps_no_credentials() -> None:
    for path in sorted(WORKFLOWS.glob("*.yml")):
        text = path.read_text(encoding="utf-8")
        uses = re.findall(r"uses:\s*(\S+)(.*)", text)
        assert uses, path
        for action, comment in uses:
            assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", action), f"{path.name}: {action} not pinned"
            assert re.fullmatch(r"\s*# v\d+(\.\d+)*", comment), (
                f"{path.name}: {action} has no version comment"
            )
        for job in yaml.safe_load(text)["jobs"].values():
            for step in job["steps"]:
                if step.get("uses", "").startswith("actions/checkout@"):
                    assert step.get("with", {}).get("persist-credentials") is False, (path.name, step)


def test_dependabot_watches_the_base_image_the_locks_and_the_actions() -> None:
    config = yaml.safe_load(DEPENDABOT.read_text(encoding="utf-8"))
    ecosystems = {update["package-ecosystem"]: update for update in config["updates"]}
    assert {"docker", "pip", "github-actions"} <= set(ecosystems)
    assert all(update["directory"] == "/" for update in ecosystems.values())


@pytest.mark.parametrize(
    "command",
    [
        [
            "check-jsonschema",
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, WORKFLOWS.glob("*.yml")),
        ],
        ["check-jsonschema", "--builtin-schema", "vendor.dependabot", str(DEPENDABOT)],
        ["zizmor", "--offline", "--no-progress", str(REPO / ".github")],
    ],
    ids=["workflows-schema", "dependabot-schema", "zizmor"],
)
def test_the_github_configuration_passes_its_linters(command: list[str]) -> None:
    executable = shutil.which(command[0]) or shutil.which(command[0], path=str(Path(sys.executable).parent))
    if executable is None:
        pytest.skip(f"{command[0]} is not installed (it is in the test extra: pip install -e '.[test]')")
    result = subprocess.run(
        [executable, *command[1:]], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_state_directory_is_created_private() -> None:
    """0700, as otelbridge makes it on start: created 0750, every fresh volume (which copies the
    image's directory) logged "was mode 0750: now 0700"."""
    _, stages = dockerfile_stages()
    runs = [rest for keyword, rest in stages[-1].instructions if keyword == "RUN"]
    modes = re.findall(r"chmod (\d+) /var/lib/otelbridge\b", " ".join(runs))
    assert modes == ["0700"], modes
