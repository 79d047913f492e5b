"""Files that must never be half-written or shared: atomic writes and an exclusive directory lock.

    atomic_write(path, text_or_bytes)          # readers see the old file or the new one, never a mix
    with DirectoryLock(workdir):               # a second holder is refused at once, naming our pid
        ...

The only home of both jobs in the package (the sweep's workdir, the GGUF header index, the scripts'
JSON outputs use them). Imports nothing from the package.
"""

from __future__ import annotations

import errno
import os
import tempfile


def atomic_write(path: str | os.PathLike, data: str | bytes, *, fsync: bool = True) -> None:
  """Writes ``data`` to ``path`` through a temporary file in the same directory and a rename.

  On any failure (a full disk, a directory in the way, an interrupt) the temporary file is removed
  and the error raised: nothing stray survives, and ``path`` keeps its old contents.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    raise IsADirectoryError(errno.EISDIR, "is a directory, not a file path", path)
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    # mkstemp creates the file 0600; give it the mode a plain open() would (the old file's, else
    # 0666 less the umask), so a colleague or a notebook server can read what the run wrote.
    try:
      mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
      mode = 0o666 & ~_umask()
    os.chmod(tmp, mode)
    with os.fdopen(fd, "wb") as f:
      f.write(data.encode("utf-8") if isinstance(data, str) else data)
      f.flush()
      if fsync:
        os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except OSError:
      pass
    raise


def _umask() -> int:
  """The process's umask, read without changing it where the OS allows (os.umask sets it too, so
  another thread could create a file under the temporary value)."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError):
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def check_writable_file(path: str | os.PathLike, name: str = "path") -> str:
  """``path`` if a file can be written there (its directory exists and is writable, and it is not a
  directory); ValueError naming ``name`` otherwise. For scripts, to fail before loading a model."""
  path = os.fspath(path)
  if not path:
    raise ValueError(f"{name}: empty path")
  if os.path.isdir(path):
    raise ValueError(f"{name}: {path!r} is a directory; give a file path")
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise ValueError(f"{name}: directory {directory!r} does not exist")
  if not os.access(directory, os.W_OK):
    raise ValueError(f"{name}: directory {directory!r} is not writable")
  if os.path.exists(path) and not os.access(path, os.W_OK):
    raise ValueError(f"{name}: {path!r} is not writable")
  return path


class LockedError(RuntimeError):
  """Another process holds the directory."""


class DirectoryLock:
  """An exclusive ``fcntl`` lock on ``<directory>/.lock``, held while the context is open.

  The file holds the holder's pid (for the message a second process gets). The operating system
  releases the lock when its process ends, however it ends, so a lock left by a killed run never
  blocks the next one. Locks are advisory and per open file: they work between processes on one
  machine (and on most network file systems that support ``fcntl`` locks).
  """

  NAME = ".lock"

  def __init__(self, directory: str | os.PathLike):
    self.directory = os.fspath(directory)
    self.path = os.path.join(self.directory, self.NAME)
    self._fd: int | None = None

  def acquire(self) -> "DirectoryLock":
    import fcntl

    os.makedirs(self.directory, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.lseek(fd, 0, os.SEEK_SET)
      holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
      os.close(fd)
      if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise LockedError(
          f"{self.directory!r} is in use by another run (pid {holder}); wait for it to finish or use another directory"
        ) from None
      raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      import fcntl

      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "DirectoryLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
