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


class Killed(Exception):
    """The process dying at that point."""


def _build(final, text):
    with fsutil.staged_dir(final) as tmp:
        (tmp / "x").write_text(text)


def test_exchange_swaps_two_folders_in_one_step(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "f").write_text("from a"), (b / "f").write_text("from b")
    assert fsutil.exchange(a, b)  # tmpfs and ext4 have RENAME_EXCHANGE
    assert (a / "f").read_text() == "from b" and (b / "f").read_text() == "from a"


def test_the_swap_never_moves_the_finished_stage_away(tmp_path, monkeypatch):
    """It used to rename the finished folder to `<stage>.old`, then the new one in: a crash
    between the two left no stage at all."""
    final = tmp_path / "sft-1"
    _build(final, "first")
    real_replace = fsutil.os.replace

    def guard(src, dst):
        if str(src) == str(final):
            raise Killed("killed with the finished stage renamed away")
        real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", guard)
    _build(final, "second")
    assert fsutil.is_done(final) and (final / "x").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft-1"]


def test_a_crash_right_after_the_swap_leaves_the_new_stage_done(tmp_path, monkeypatch):
    """Killed after the exchange, before the old copy (now in `.tmp`) is deleted."""
    final = tmp_path / "sft-1"
    _build(final, "first")
    real_rmtree = fsutil.shutil.rmtree

    def crash(path, *a, **k):
        if str(path).endswith(".tmp") and (final / "x").read_text() == "second":
            raise Killed("killed right after the swap")
        real_rmtree(path, *a, **k)

    monkeypatch.setattr(fsutil.shutil, "rmtree", crash)
    with pytest.raises(Killed):
        _build(final, "second")
    assert fsutil.is_done(final) and (final / "x").read_text() == "second"
    monkeypatch.setattr(fsutil.shutil, "rmtree", real_rmtree)
    _build(final, "third")  # the next build clears what the crash left
    assert (final / "x").read_text() == "third" and not final.with_name("sft-1.tmp").exists()


def test_without_exchange_a_cut_swap_is_rebuilt_and_its_leftover_removed(tmp_path, monkeypatch):
    """Where the filesystem has no exchange (NFS, macOS) the two renames remain: a crash between
    them leaves the stage not done (Make rebuilds it, never takes `.old` for it), and that
    rebuild removes `.old`."""
    final = tmp_path / "kto-1"
    _build(final, "first")
    monkeypatch.setattr(fsutil, "exchange", lambda a, b: False)
    real_replace, calls = fsutil.os.replace, []

    def crash(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise Killed("killed between the two renames")
        real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", crash)
    with pytest.raises(Killed):
        _build(final, "second")
    assert not fsutil.is_done(final) and final.with_name("kto-1.old").exists()
    monkeypatch.setattr(fsutil.os, "replace", real_replace)
    _build(final, "third")
    assert (final / "x").read_text() == "third" and not final.with_name("kto-1.old").exists()
