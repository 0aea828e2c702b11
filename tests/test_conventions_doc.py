"""docs/conventions.md is the contract: every name the code can emit must be listed there."""

from pathlib import Path

from otelbridge.mapping import conventions

DOC = (Path(__file__).resolve().parents[1] / "docs" / "conventions.md").read_text()


def _names() -> dict[str, str]:
    return {
        name: value for name, value in vars(conventions).items() if name.isupper() and isinstance(value, str)
    }


def test_every_name_is_documented() -> None:
    missing = {name: value for name, value in _names().items() if value not in DOC}
    assert not missing, f"names emitted by the code but absent from docs/conventions.md: {missing}"


def test_doc_states_the_contract_version() -> None:
    assert f"**Contract version: {conventions.CONTRACT_VERSION}**" in DOC


def test_buckets_in_doc_match_code() -> None:
    def fmt(values: tuple[float, ...]) -> str:
        return ", ".join(f"{v:g}" for v in values)

    for values in (
        conventions.TTFB_BUCKETS_S,
        conventions.TURN_DURATION_BUCKETS_S,
        conventions.CALL_DURATION_BUCKETS_S,
        conventions.LOG_METRIC_SECONDS_BUCKETS,
    ):
        assert fmt(values) in DOC
