"""benchmarks.settings: the variants it compares are read as written, and a malformed one is refused."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.settings import Variant, main, parse_variant


def test_a_variant_is_a_name_and_the_servers_environment() -> None:
    assert parse_variant("defaults:") == Variant("defaults", {})
    assert parse_variant("two:BLOODCELLS_MAX_CONCURRENT_IMAGES=2,MALLOC_ARENA_MAX=1") == \
        Variant("two", {"BLOODCELLS_MAX_CONCURRENT_IMAGES": "2", "MALLOC_ARENA_MAX": "1"})
    assert parse_variant("url:X=a=b") == Variant("url", {"X": "a=b"})


def test_a_variant_may_serve_another_revisions_code() -> None:
    assert parse_variant("before@bfc5d8a:") == Variant("before", {}, "bfc5d8a")
    assert parse_variant("old@HEAD~2:BLOODCELLS_THREADS=1") == Variant("old", {"BLOODCELLS_THREADS": "1"}, "HEAD~2")


@pytest.mark.parametrize("text", [":X=1", "bad:X", "bad:=1", "bad@:", "@rev:"])
def test_a_malformed_variant_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_variant(text)


def test_one_variant_is_nothing_to_compare() -> None:
    with pytest.raises(SystemExit):
        main(["--variant", "only:"])


def test_a_revisions_tree_holds_that_revisions_files_and_is_removed() -> None:
    import subprocess

    from benchmarks.common import REPO, revision_tree

    committed = subprocess.run(["git", "-C", str(REPO), "show", "HEAD:app/main.py"], capture_output=True).stdout
    with revision_tree("HEAD") as tree:
        assert (tree / "app" / "main.py").read_bytes() == committed
        assert any((tree / "models").glob("*.onnx"))
    assert not tree.exists()


def test_an_unknown_revision_is_refused_with_gits_reason() -> None:
    from benchmarks.common import BenchmarkError, revision_tree

    with pytest.raises(BenchmarkError, match="no-such-revision"):
        with revision_tree("no-such-revision"):
            pass
