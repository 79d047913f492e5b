"""Optional dependencies: a missing one names the extra that installs it.

The base install (``pip install smollm3-jax``) generates, sweeps and fine-tunes; the server needs the
``serve`` extra, the lm-evaluation-harness model, BLEU and DataFrames the ``eval`` extra.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

EXTRAS = {"serve": ("starlette", "uvicorn", "httpx"), "eval": ("lm_eval", "sacrebleu", "pandas")}


@contextlib.contextmanager
def needs(extra: str, what: str) -> Iterator[None]:
  """Imports inside the block that fail for a module of ``extra`` raise a ModuleNotFoundError saying
  which extra to install (``what``: the feature, e.g. "the server")."""
  try:
    yield
  except ModuleNotFoundError as e:
    top = (e.name or "").partition(".")[0]
    if top not in EXTRAS[extra]:
      raise
    raise ModuleNotFoundError(
      f"{what} needs the {extra!r} extra ({top} is not installed): pip install 'smollm3-jax[{extra}]'", name=e.name
    ) from None
