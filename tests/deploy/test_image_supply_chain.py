"""The built image against its supply-chain promises (docs/supply-chain.md): its virtualenv holds
exactly the lock's pins (and otelbridge), the SBOM it ships at /opt/otelbridge/sbom.cdx.json lists
exactly that, and the tool that wrote the SBOM stayed in the build stage."""

from __future__ import annotations

import json

import pytest
from packaging.utils import canonicalize_name

from otelbridge import __version__
from tests.deploy import podman
from tests.deploy.test_supply_chain import IMAGE_LOCK, IMAGE_SBOM, marker_environment, parse_lock

pytestmark = pytest.mark.container

LIST_DISTRIBUTIONS = (
    "import importlib.metadata as m, json, sys; "
    "print(json.dumps({'python': list(sys.version_info[:2]), "
    "'distributions': sorted([d.metadata['Name'], d.version] for d in m.distributions())}))"
)


def in_image(image: str, entrypoint: str, *args: str) -> str:
    return podman.podman("run", "--rm", "--read-only", "--entrypoint", entrypoint, image, *args).stdout


def test_the_image_holds_the_locked_versions_and_ships_their_sbom(image: str) -> None:
    listing = json.loads(in_image(image, "/opt/otelbridge/bin/python", "-c", LIST_DISTRIBUTIONS))
    installed: dict[str, str] = {
        canonicalize_name(name): version for name, version in listing["distributions"]
    }
    assert installed.pop("otelbridge") == __version__
    python = (listing["python"][0], listing["python"][1])
    lock = parse_lock(IMAGE_LOCK)
    expected = {
        name: str(pin.version)
        for name, pin in lock.pins.items()
        if pin.marker is None or pin.marker.evaluate(marker_environment(python, "x86_64"))
    }
    # Nothing but the lock (no pip, no setuptools, no build tool), every pin at its version.
    assert installed == expected

    bom = json.loads(in_image(image, "cat", IMAGE_SBOM))
    assert bom["bomFormat"] == "CycloneDX"
    root = bom["metadata"]["component"]
    assert (root["name"], root["version"]) == ("otelbridge", __version__)
    listed = {canonicalize_name(c["name"]): c["version"] for c in bom["components"]}
    assert listed == installed

    labels = json.loads(podman.podman("image", "inspect", image).stdout)[0]["Config"]["Labels"]
    assert labels["io.github.otelbridge.sbom"] == IMAGE_SBOM


def test_the_sbom_tool_stayed_in_the_build_stage(image: str) -> None:
    probe = in_image(
        image,
        "/bin/sh",
        "-c",
        "ls -d /tmp/build-tools /tmp/dist 2>/dev/null; "
        "/opt/otelbridge/bin/python -c 'import cyclonedx' 2>/dev/null && echo importable; true",
    )
    assert probe.split() == [], probe
