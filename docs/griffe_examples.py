"""A griffe extension for the API reference: two docstring habits of the package, made to render.

- Google-style docstrings name the section ``Examples:``; griffe reads a singular ``Example:`` as an admonition whose
  ``>>>`` lines are Markdown, where ``rows["train"]["text"]`` or ``['a', 'b']`` look like reference links. Several
  docstrings say ``Example:``; they are read as ``Examples:``, so their code stays code.
- Sphinx roles (``:class:`~datasets.Dataset```, ``:func:`mine_pairs```) are not Markdown; they become code spans.
"""

from __future__ import annotations

import re

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:class|func|meth|data|mod|attr|exc|obj):`~?([^`]+)`")


class ExampleSections(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is None:
            return
        value = _SINGULAR.sub(r"\1Examples:", obj.docstring.value)
        obj.docstring.value = _ROLE.sub(r"`\1`", value)
