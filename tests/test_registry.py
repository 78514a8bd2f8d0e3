"""The model registry: versions, aliases, rollback, and two promotions racing."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from batchline import storage
from batchline.errors import DataError, SpecError
from batchline.registry import Registry


def _model(n: int) -> bytes:
    return f"tree\nversion=v4\nnum_leaves={n}\n".encode()


def _race(root: str, text: bytes, run_id: str, barrier: Any, out: Any) -> None:
    """One run's promotion: read the champion, decide, then move it conditionally."""
    storage._FS_CACHE.clear()  # a forked child makes its own S3 connections
    registry = Registry(root, "fleet")
    version = registry.register("H001", text, {"metrics": {"auc_valid": 0.7}})
    expected = registry.alias("H001")
    barrier.wait()  # both have judged against the same champion before either writes
    moved = registry.move("H001", "champion", version, expected.version if expected else None,
                          run_id=run_id, by="gate", reason="beats the champion")
    registry.record_decision("H001", run_id, {"promoted": moved.won, "reason": moved.reason,
                                              "version": version})
    out.put((run_id, moved.won, moved.reason, moved.alias.version if moved.alias else None))


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    return str(request.getfixturevalue("s3_bucket")) + "/store"


def test_versions_are_content_addressed_and_checked(root: str) -> None:
    registry = Registry(root, "fleet")
    first = registry.register("H001", _model(3), {"lineage": {"run_id": "r1"}})
    assert registry.register("H001", _model(3), {"lineage": {"run_id": "r2"}}) == first
    assert [v["version"] for v in registry.versions("H001")] == [first]
    assert registry.version("H001", first)["lineage"] == {"run_id": "r1"}  # the first stays
    assert registry.model_text("H001", first) == _model(3)
    with pytest.raises(SpecError, match=f"has no version 'nope'; registered: {first}"):
        registry.version("H001", "nope")
    assert registry.segments() == ["H001"]


def test_a_changed_model_file_is_refused(tmp_path: Path) -> None:
    registry = Registry(str(tmp_path), "fleet")
    version = registry.register("H001", _model(3), {})
    (tmp_path / "registry" / "fleet" / "H001" / version / "model.txt").write_bytes(_model(4))
    with pytest.raises(DataError, match="does not match its registered sha256"):
        registry.model_text("H001", version)


def test_promote_and_rollback_keep_a_history(root: str) -> None:
    registry = Registry(root, "fleet")
    v1, v2 = (registry.register("H001", _model(n), {}) for n in (1, 2))
    assert registry.promote("H001", v1, by="alice", reason="first").won
    assert registry.promote("H001", v2, by="alice", reason="better").won
    champion = registry.alias("H001")
    assert champion is not None and (champion.version, champion.history) == (v2, [v1])
    again = registry.promote("H001", v2, by="bob", reason="again")
    assert not again.won and "already the champion" in again.reason
    back = registry.rollback("H001", by="bob")
    assert back.won and back.alias is not None and back.alias.version == v1
    with pytest.raises(SpecError, match="no earlier champion"):
        registry.rollback("H001", by="bob")
    with pytest.raises(SpecError, match="has no version"):
        registry.promote("H001", "0123456789ab", by="bob", reason="typo")
    with pytest.raises(SpecError, match="unknown alias 'champ'"):
        registry.alias("H001", "champ")


@pytest.mark.parametrize("with_champion", [False, True])
def test_two_runs_promoting_at_once_exactly_one_wins(root: str, with_champion: bool) -> None:
    registry = Registry(root, "fleet")
    if with_champion:
        old = registry.register("H001", _model(0), {})
        registry.promote("H001", old, by="setup", reason="first champion")
    # fork: a spawned interpreter re-imports everything (seconds on a busy machine);
    # each child makes its own S3 client after the fork.
    context = multiprocessing.get_context("fork")
    barrier, out = context.Barrier(2), context.Queue()
    runs = [context.Process(target=_race, args=(root, _model(n), f"run-{n}", barrier, out))
            for n in (1, 2)]
    for process in runs:
        process.start()
    results = sorted(out.get(timeout=60) for _ in runs)
    for process in runs:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert sorted(won for _, won, _, _ in results) == [False, True]
    winner = next(r for r in results if r[1])
    loser = next(r for r in results if not r[1])
    champion = registry.alias("H001")
    assert champion is not None and champion.run_id == winner[0]
    assert loser[3] == champion.version  # the loser sees the winner's version
    assert f"run {winner[0]} moved champion to version {champion.version} first" in loser[2]
    decisions = {d["run_id"]: d for d in registry.decisions("H001")}
    assert decisions[loser[0]]["promoted"] is False
    assert winner[0] in decisions[loser[0]]["reason"]
