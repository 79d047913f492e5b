"""Process-level runtime settings: the on-disk start-up caches.

    from smollm3_jax.utils import runtime
    runtime.enable_compilation_cache()          # before the first compile; later processes start sooner

Start-up caches, both in one directory (default ``$SMOLLM3_JAX_CACHE_DIR``, else
``~/.cache/smollm3_jax/jax``). The package turns both on by itself the first time it loads a model
or builds an engine (:func:`enable_default_caches`), so a second process, or a second shape in a
notebook, does not wait for a compile it already paid for; ``SMOLLM3_JAX_CACHE_DIR=off`` keeps them
off, and an explicit :func:`enable_compilation_cache` / :func:`disable_compilation_cache`, or a JAX
cache directory the caller set, is left as it is:

* JAX's persistent compilation cache (compiled programs), in the directory itself;
* the GGUF header index (:mod:`smollm3_jax.checkpoints.gguf`: metadata, vocabulary and tensor
  offsets of each GGUF file, so later processes skip seconds of header parsing), in its
  ``gguf_index/`` subdirectory (JAX only touches its own ``*-cache`` files).

:func:`enable_compilation_cache` turns on both, :func:`disable_compilation_cache` turns off both;
:func:`enable_gguf_index` / :func:`disable_gguf_index` switch the index alone; compiles inside
:func:`compilation_cache_paused` skip the compilation cache.

Imports nothing from the package.
"""

from __future__ import annotations

import contextlib
import os

import jax

CACHE_ENV = "SMOLLM3_JAX_CACHE_DIR"
GGUF_INDEX_SUBDIR = "gguf_index"

_gguf_index_dir: str | None = None  # None: off (until enabled)
_chosen = False  # the caches were switched explicitly: the package's default leaves them alone
OFF_VALUES = ("off", "0", "false", "none")


def enable_default_caches() -> str | None:
  """The package's default, run when it loads a model or builds an engine: turns the caches on in
  :func:`default_cache_dir` once per process, unless ``$SMOLLM3_JAX_CACHE_DIR`` is ``off``, the caller
  switched them already (:func:`enable_compilation_cache` / :func:`disable_compilation_cache`), or
  JAX's ``jax_compilation_cache_dir`` was set by the caller. Returns the directory, or None."""
  global _chosen
  if _chosen:
    return jax.config.jax_compilation_cache_dir
  _chosen = True
  if os.environ.get(CACHE_ENV, "").strip().lower() in OFF_VALUES or jax.config.jax_compilation_cache_dir:
    return None
  try:
    return enable_compilation_cache()
  except OSError:  # an unwritable home: run without the caches rather than fail
    return None


def _reset_jax_cache() -> None:
  try:  # JAX decides once per process whether to use its cache (and binds it to one dir): ask again
    from jax._src import compilation_cache as _cc

    _cc.reset_cache()
  except Exception:  # pragma: no cover - private API moved; the config update still applies
    pass


@contextlib.contextmanager
def compilation_cache_paused():
  """Compiles inside neither read nor write the persistent compilation cache (compile-only
  executables for a device this process cannot load: nothing worth keeping, nothing to read)."""
  was = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  _reset_jax_cache()
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", was)
    _reset_jax_cache()


def default_cache_dir() -> str:
  """``$SMOLLM3_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/smollm3_jax/jax`` (``~/.cache/...``)."""
  env = os.environ.get(CACHE_ENV)
  if env:
    return os.path.expanduser(env)
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "smollm3_jax", "jax")


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str:
  """Turns on JAX's persistent compilation cache in ``path`` (default :func:`default_cache_dir`).

  Every compiled program is written to disk (no minimum compile time or size), so a second
  process with the same model shapes skips XLA compilation. Also turns on the GGUF header index
  in ``<path>/gguf_index`` (:func:`enable_gguf_index`). Safe to call more than once; a new path
  takes effect for later compiles and GGUF loads. Returns the directory used.
  """
  global _chosen
  _chosen = True
  path = os.path.abspath(os.path.expanduser(os.fspath(path))) if path else default_cache_dir()
  os.makedirs(path, exist_ok=True)
  enable_gguf_index(os.path.join(path, GGUF_INDEX_SUBDIR))
  if jax.config.jax_compilation_cache_dir != path:
    jax.config.update("jax_compilation_cache_dir", path)
    _reset_jax_cache()
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  return path


def disable_compilation_cache() -> None:
  """Turns the persistent compilation cache (and the GGUF header index) off for this process."""
  global _chosen
  _chosen = True
  disable_gguf_index()
  jax.config.update("jax_compilation_cache_dir", None)
  _reset_jax_cache()


def enable_gguf_index(path: str | os.PathLike | None = None) -> str:
  """Turns on the on-disk GGUF header index in ``path`` (default ``<default_cache_dir()>/gguf_index``)
  for later GGUF loads in this process: the first load of a file writes its index, later
  processes read it instead of parsing the header. The directory is created on first write.
  Returns the directory used."""
  global _gguf_index_dir
  _gguf_index_dir = (
    os.path.abspath(os.path.expanduser(os.fspath(path)))
    if path
    else os.path.join(default_cache_dir(), GGUF_INDEX_SUBDIR)
  )
  return _gguf_index_dir


def disable_gguf_index() -> None:
  """Turns the GGUF header index off: later loads parse headers and write nothing to disk."""
  global _gguf_index_dir
  _gguf_index_dir = None


def gguf_index_dir() -> str | None:
  """The directory of the GGUF header index, or None while it is off."""
  return _gguf_index_dir
