"""Atomic outputs: complete or absent, and user mistakes about paths are one-line errors."""
import pytest

from zoomshot.errors import ZsError
from zoomshot.fileutil import atomic_path, write_text_atomic


def test_a_failed_write_leaves_nothing_and_a_good_one_replaces(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    write_text_atomic(target, "one")
    write_text_atomic(target, "two")
    assert target.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_folder_where_a_file_goes_is_refused_before_any_work(tmp_path):
    worked = []
    with pytest.raises(ZsError, match="is a folder"):
        with atomic_path(tmp_path) as tmp:
            worked.append(tmp)
    assert worked == []
    blocker = tmp_path / "f"
    blocker.write_text("x")
    with pytest.raises(ZsError, match="cannot write"):
        write_text_atomic(blocker / "sub" / "out.txt", "y")
