"""Griffe extension for the API pages: pneumo's docstrings head their doctests ``Example:``, which the Google
parser reads as an admonition of Markdown text (so ``report["metrics"]["auroc"]`` looks like a link). Read as
``Examples:``, the same lines render as code."""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleIsExamples(griffe.Extension):
    """Rename a docstring's ``Example:`` section heading to ``Examples:`` before it is parsed."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _HEADING.sub(r"\1Examples:", obj.docstring.value)
