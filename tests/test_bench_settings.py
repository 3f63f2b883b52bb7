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


def test_a_revisions_worktree_holds_that_revisions_code_and_is_removed() -> None:
    import subprocess

    from benchmarks.common import REPO, worktree

    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    with worktree("HEAD") as tree:
        assert (tree / "app" / "main.py").is_file() and (tree / "models").is_dir()
        checked_out = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert checked_out.stdout.strip() == head
    assert not tree.exists()
    listed = subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True).stdout
    assert str(tree) not in listed
