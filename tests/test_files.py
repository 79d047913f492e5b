"""Atomic writes keep the mode a plain open() gives (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat

from smollm3_jax.utils import files


def test_atomic_write_gives_new_files_the_umask_mode_and_keeps_an_old_files_mode(tmp_path):
  old = os.umask(0o027)
  try:
    new = tmp_path / "summary.csv"
    files.atomic_write(new, "a,b\n")
    assert stat.S_IMODE(os.stat(new).st_mode) == 0o640  # 0666 less the umask, as open() would
    assert files._umask() == 0o027
    os.umask(0o022)
    files.atomic_write(new, "a,b\n1,2\n")  # an existing file keeps its mode
    assert stat.S_IMODE(os.stat(new).st_mode) == 0o640
    other = tmp_path / "config.json"
    files.atomic_write(other, "{}")
    assert stat.S_IMODE(os.stat(other).st_mode) == 0o644
    os.chmod(other, 0o600)
    files.atomic_write(other, "{ }")
    assert stat.S_IMODE(os.stat(other).st_mode) == 0o600
    assert new.read_text() == "a,b\n1,2\n" and not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
  finally:
    os.umask(old)
