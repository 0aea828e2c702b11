"""Deployment tests: the container image, the sidecar example and the Helm chart, run for real
with podman (``pytest -m container``; helpers in tests/deploy/podman.py)."""
