"""benchmarks.settings: the variants it compares are read as written, and a malformed one is refused."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.settings import main, parse_variant


def test_a_variant_is_a_name_and_the_servers_environment() -> None:
    assert parse_variant("defaults:") == ("defaults", {})
    assert parse_variant("two:BLOODCELLS_MAX_CONCURRENT_IMAGES=2,MALLOC_ARENA_MAX=1") == \
        ("two", {"BLOODCELLS_MAX_CONCURRENT_IMAGES": "2", "MALLOC_ARENA_MAX": "1"})
    assert parse_variant("url:X=a=b") == ("url", {"X": "a=b"})


@pytest.mark.parametrize("text", [":X=1", "bad:X", "bad:=1"])
def test_a_malformed_variant_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_variant(text)


def test_one_variant_is_nothing_to_compare() -> None:
    with pytest.raises(SystemExit):
        main(["--variant", "only:"])
