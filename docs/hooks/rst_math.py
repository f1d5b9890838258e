"""MkDocs hook: render the reST ``:math:`...``` roles of numpydoc docstrings as MathJax.

mkdocstrings renders a docstring's ``:math:`x``` as the text ``:math:`` followed by an
inline code span; this turns that pair into the inline-math span that pymdownx.arithmatex
produces for Markdown pages, so the formulas in the API reference are typeset too.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":math:<code>(.*?)</code>", re.DOTALL)


def on_page_content(html: str, **kwargs: Any) -> str:
    return _ROLE.sub(r'<span class="arithmatex">\\(\1\\)</span>', html)
