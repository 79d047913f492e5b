"""The README and docs/ stay in step with the code: the defaults table is the code's, every module is
described and has an API page, links resolve. (``make docs`` builds the site itself, strictly.)"""

from __future__ import annotations

import ast
import glob
import os
import re

from smollm3_jax.generation import defaults as generation_defaults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
PACKAGE = os.path.join(ROOT, "smollm3_jax")


def _read(*parts: str) -> str:
  with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
    return f.read()


def _modules() -> list[str]:
  """Paths under smollm3_jax/ of every module with content (a package __init__ holding only its
  docstring is left out)."""
  out = []
  for path in sorted(glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True)):
    rel = os.path.relpath(path, PACKAGE).replace(os.sep, "/")
    if rel.endswith("__init__.py") and rel != "__init__.py":
      body = ast.parse(open(path, encoding="utf-8").read()).body
      if all(isinstance(n, ast.Expr) or (isinstance(n, ast.ImportFrom) and n.module == "__future__") for n in body):
        continue
    out.append(rel)
  return out


def _dotted(rel: str) -> str:
  name = "smollm3_jax." + rel[: -len(".py")].replace("/", ".")
  return name[: -len(".__init__")] if name.endswith(".__init__") else name


def test_decoding_page_defaults_table_is_the_codes():
  rows = dict(re.findall(r"^\| `(\w+)` \| ([\d.]+)(?: \(off\))? \|", _read("docs", "decoding.md"), re.M))
  table = {name: value for name, (value, _) in generation_defaults.TABLE.items()}
  assert {k: float(rows[k]) for k in table} == {k: float(v) for k, v in table.items()}


def test_every_module_is_in_the_architecture_table_and_on_an_api_page():
  architecture = _read("docs", "architecture.md")
  api = "".join(_read("docs", "api", name) for name in sorted(os.listdir(os.path.join(DOCS, "api"))))
  documented = set(re.findall(r"^::: (\S+)", api, re.M))
  missing_row = [rel for rel in _modules() if f"`{rel}`" not in architecture]
  missing_api = [_dotted(rel) for rel in _modules() if rel != "__init__.py" and _dotted(rel) not in documented]
  assert not missing_row, f"add a row to docs/architecture.md's module table for: {missing_row}"
  assert not missing_api, f"add '::: <module>' to the layer's page in docs/api/ for: {missing_api}"
  stale = [m for m in documented if m != "smollm3_jax" and _dotted_path(m) is None]
  assert not stale, f"docs/api/ names modules that do not exist: {stale}"


def _dotted_path(module: str) -> str | None:
  base = os.path.join(ROOT, *module.split("."))
  for path in (base + ".py", os.path.join(base, "__init__.py")):
    if os.path.exists(path):
      return path
  return None


def test_readme_is_a_landing_page_whose_links_resolve():
  text = _read("README.md")
  assert len(text.splitlines()) <= 250
  setup = text[text.index("\n## Set up\n") :]
  block = re.search(r"```bash\n(.*?)```", setup, re.S).group(1)
  assert [line.split("#")[0].strip() for line in block.splitlines()] == ["make demo", "make test"]
  for target in re.findall(r"\]\(((?!https?:)[^)#]+)(?:#[^)]*)?\)", text):
    assert os.path.exists(os.path.join(ROOT, target)), f"README links to a missing file: {target}"
  # The layout table names every folder (layer) of the package.
  layers = sorted(d for d in os.listdir(PACKAGE) if os.path.isfile(os.path.join(PACKAGE, d, "__init__.py")))
  assert all(f"| `{d}/` |" in text for d in layers), layers


def test_every_docs_page_is_in_the_site_nav():
  nav = _read("mkdocs.yml")
  pages = [
    os.path.relpath(p, DOCS).replace(os.sep, "/") for p in glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True)
  ]
  assert pages and all(p in nav for p in pages), [p for p in pages if p not in nav]
