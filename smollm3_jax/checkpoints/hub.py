"""Hugging Face Hub ids -> local snapshot directories (through ``huggingface_hub``'s cache).

``HF_HUB_OFFLINE=1`` / ``HF_HOME`` / ``HF_HUB_CACHE`` are honoured by ``huggingface_hub`` itself: offline,
a cached snapshot is used and nothing is fetched.
"""

from __future__ import annotations

import os
import re

# What a checkpoint needs: configs, weights, tokenizer files. No *.bin / *.pth / *.gguf duplicates.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer*"]

_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_repo_id(checkpoint: str) -> bool:
  """True for ``name`` or ``org/name`` strings that are not paths on disk."""
  return (
    isinstance(checkpoint, str)
    and bool(_REPO_ID_RE.match(checkpoint))
    and not os.path.exists(checkpoint)
    and not checkpoint.endswith(".gguf")
    and ".." not in checkpoint
  )


def snapshot(repo_id: str, *, revision: str | None = None, config_only: bool = False) -> str:
  """Local directory holding the snapshot of ``repo_id`` (downloaded unless cached / offline)."""
  try:
    import huggingface_hub
    from huggingface_hub import constants, errors
  except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
    raise ImportError(f"loading the hub id {repo_id!r} needs the huggingface_hub package") from e
  patterns = ["config.json"] if config_only else ALLOW_PATTERNS
  try:
    return huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=patterns)
  except errors.LocalEntryNotFoundError as e:
    offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
    raise FileNotFoundError(
      f"checkpoint {repo_id!r} is not a local path and is not in the Hugging Face cache "
      f"({constants.HF_HUB_CACHE}), and it could not be downloaded{offline}. Download it first "
      f"(huggingface-cli download {repo_id}) or pass a local directory / .gguf file."
    ) from e
  except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as e:
    raise FileNotFoundError(
      f"checkpoint {repo_id!r} is not a local path and no such repository/revision exists on "
      f"the Hugging Face Hub (or it is private / gated: log in with `hf auth login`)"
    ) from e
