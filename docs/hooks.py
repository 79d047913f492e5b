"""mkdocs hook: the docstrings' Sphinx roles (:func:`x`, :mod:`~a.b`) become code, linked where the name is documented.

mkdocstrings renders ``:func:`x``` as the text ``:func:`` before a code span. This hook (run on each page's
HTML) drops the role and, for a dotted name, asks mkdocs-autorefs for an optional link: resolved when the
API pages document that object, plain code otherwise (never a warning). ``~a.b.c`` shows ``c``.
"""

from __future__ import annotations

import html
import re

_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|data|attr|exc|obj|const|term):<code>(~?)([^<]+)</code>")


def _replace(match: re.Match) -> str:
  short, name = match.group(1), html.unescape(match.group(2)).strip()
  shown = name.rsplit(".", 1)[-1] if short else name
  if not re.fullmatch(r"[A-Za-z_][\w.]*", name) or "." not in name:
    return f"<code>{html.escape(shown)}</code>"
  return f'<autoref identifier="{html.escape(name)}" optional><code>{html.escape(shown)}</code></autoref>'


def on_page_content(content: str, **_) -> str:
  return _ROLE.sub(_replace, content)
