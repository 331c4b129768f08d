"""A stage folder appears only complete, stamp last; a failed stage never looks done."""

import pytest

from safealign.core import fsutil


def test_staged_dir_success_and_replace(tmp_path):
    final = tmp_path / "sft"
    with fsutil.staged_dir(final) as tmp:
        assert tmp.name == "sft.tmp" and not final.exists()
        (tmp / "a").write_text("1")
    assert fsutil.is_done(final) and (final / "a").read_text() == "1" and not tmp.exists()
    with fsutil.staged_dir(final) as tmp:
        (tmp / "b").write_text("2")
    assert fsutil.is_done(final) and not (final / "a").exists() and (final / "b").exists()


def test_failed_stage_is_not_done_and_keeps_old_result(tmp_path):
    final = tmp_path / "kto"
    with fsutil.staged_dir(final) as tmp:
        (tmp / "old").write_text("ok")
    with pytest.raises(RuntimeError):
        with fsutil.staged_dir(final) as tmp:
            (tmp / "half").write_text("partial")
            raise RuntimeError("killed")
    assert (final / "old").exists() and not (final / "half").exists()
    assert not fsutil.is_done(tmp_path / "kto.tmp")
    with fsutil.staged_dir(final) as tmp:  # a rerun starts from a clean temporary folder
        assert list(tmp.iterdir()) == []


def test_write_if_changed_keeps_mtime(tmp_path):
    p = tmp_path / "c.json"
    assert fsutil.write_if_changed(p, "x")
    m = p.stat().st_mtime_ns
    assert not fsutil.write_if_changed(p, "x") and p.stat().st_mtime_ns == m
    assert fsutil.write_if_changed(p, "y") and p.read_text() == "y"
