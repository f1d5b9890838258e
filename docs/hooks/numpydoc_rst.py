r"""Griffe extension (loaded by mkdocstrings-python): render the reST inside numpydoc docstrings.

The docstrings stay numpydoc, reST inside, as Sphinx, numpydoc, IDEs and ``help()`` read them.
mkdocstrings renders their text as Markdown, which prints reST constructs as literal text. This
rewrites, in the copy that mkdocstrings renders (the source files are not touched):

- ``.. math::`` directives into ``$$`` blocks for pymdownx.arithmatex, one per equation
  (blank-line-separated parts, as in Sphinx), a multi-line equation (``\\``) wrapped in
  ``split`` and one with ``&`` alone in ``aligned``;
- ``:math:`x``` into ``\(x\)``;
- ``:func:``, ``:class:``, ``:meth:``, ``:attr:``, ``:mod:``, ``:data:``, ``:obj:``,
  ``:exc:`` into autorefs cross-references, resolved from the docstring's own scope (then up
  its module path, as Sphinx's Python domain searches); ``~`` shows the last name only. A
  target that no page documents (a private helper, numpy) stays code without a link;
- ``text::`` before an indented literal block into ``text:`` and a fenced Python block;
- grouped parameters ``a, b : T`` into one entry per name: griffe would give every name of a
  group the signature type and default of the first one.

It also undoes a shadowing: after ``from .range_finder import range_finder`` in a package's
``__init__``, ``pkg.range_finder`` is the function at runtime but the submodule for griffe,
so ``::: sketchlinalg.range_finder`` would document the module and its internals.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

# --- reST to Markdown, on docstring text -------------------------------------------------

_MATH_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<arg>.*)$")
_DIRECTIVE_OPTION = re.compile(r"^\s*:(label|name|class|nowrap):")
_MATH_ROLE = re.compile(r":math:`(?P<tex>[^`]+)`")
_XREF_ROLE = re.compile(
    r":(?:py:)?(?:func|class|meth|attr|mod|data|obj|exc|const):`(?P<content>[^`]+)`"
)
_SECTION_UNDERLINE = re.compile(r"^\s*-{3,}\s*$")
_PARAMETER_SECTIONS = {"parameters", "other parameters", "attributes"}
_GROUPED_ITEM = re.compile(
    r"^(?P<names>\*{0,2}\w+(?:,\s*\*{0,2}\w+)+)\s*(?::\s*(?P<type>.*?))?\s*$"
)


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """Index just past the lines from ``start`` that are blank or indented beyond ``indent``."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent_of(lines[end]) > indent):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return end


def _equation(part: str) -> str:
    # Sphinx's MathJax writer wraps a multi-line equation in split; a lone & needs an
    # alignment environment too, or MathJax reports "Misplaced &".
    if r"\begin" in part:
        return part
    if r"\\" in part:
        return "\\begin{split}\n" + part + "\n\\end{split}"
    if "&" in part:
        return "\\begin{aligned}\n" + part + "\n\\end{aligned}"
    return part


def _math_blocks(lines: list[str]) -> list[str]:
    """``.. math::`` directives (argument and/or indented body) into ``$$`` blocks."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _MATH_DIRECTIVE.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent = match["indent"]
        end = _block_end(lines, i + 1, len(indent))
        body = [line for line in lines[i + 1:end] if not _DIRECTIVE_OPTION.match(line)]
        text = textwrap.dedent("\n".join(body)).strip("\n")
        if match["arg"].strip():
            text = match["arg"].strip() + "\n" + text
        parts = [part.strip("\n") for part in re.split(r"\n\s*\n", text) if part.strip()]
        if out and out[-1].strip():
            out.append("")
        for part in parts:
            out.append(indent + "$$")
            out.extend(indent + line for line in _equation(part).splitlines())
            out.append(indent + "$$")
            out.append("")
        i = end
        if i < len(lines) and not lines[i].strip():
            i += 1  # the blank line after the directive, already emitted
    return out


def _literal_blocks(lines: list[str]) -> list[str]:
    """``paragraph::`` plus an indented literal block into ``paragraph:`` and a fence."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.rstrip()
        nxt = i + 1
        while nxt < len(lines) and not lines[nxt].strip():
            nxt += 1
        if not (
            stripped.endswith("::")
            and not stripped.lstrip().startswith(".. ")  # a directive, not a paragraph
            and nxt > i + 1
            and nxt < len(lines)
            and _indent_of(lines[nxt]) > _indent_of(line)
        ):
            out.append(line)
            i += 1
            continue
        indent = " " * _indent_of(line)
        if stripped.strip() != "::":
            out.append(stripped[:-2].rstrip() if stripped[:-2].endswith(" ") else stripped[:-1])
        end = _block_end(lines, nxt, _indent_of(line))
        code = textwrap.dedent("\n".join(lines[nxt:end]))
        out += ["", indent + "```python"]
        out += [(indent + c) if c.strip() else "" for c in code.splitlines()]
        out += [indent + "```", ""]
        i = end
        if i < len(lines) and not lines[i].strip():
            i += 1
    return out


def _split_grouped_parameters(lines: list[str]) -> list[str]:
    """``a, b : T`` items of a Parameters-like section into one item per name."""
    out: list[str] = []
    section = None
    section_indent = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        if i + 1 < len(lines) and line.strip() and _SECTION_UNDERLINE.match(lines[i + 1]):
            section, section_indent = line.strip().lower(), _indent_of(line)
            out += [line, lines[i + 1]]
            i += 2
            continue
        match = _GROUPED_ITEM.match(line.strip())
        if section in _PARAMETER_SECTIONS and match and _indent_of(line) == section_indent:
            end = _block_end(lines, i + 1, section_indent)
            description = lines[i + 1:end]
            for name in re.split(r",\s*", match["names"]):
                head = f"{name} : {match['type']}" if match["type"] else name
                out.append(" " * section_indent + head)
                out.extend(description)
            i = end
            continue
        out.append(line)
        i += 1
    return out


def _xref(obj: griffe.Object | None, content: str) -> str:
    content = content.strip()
    title = None
    if content.endswith(">") and " <" in content:
        title, _, content = content[:-1].partition(" <")
    link = not content.startswith("!")
    target = content.lstrip("!~.")
    if title is None:
        title = target.rsplit(".", 1)[-1] if content.startswith("~") else target
    if not link:
        return f"`{title}`"
    identifier = _resolve(obj, target)
    # optional: autorefs links when some page documents the target and keeps the code
    # without a link otherwise (no strict-mode warning for numpy or a private helper).
    return f'<autoref identifier="{identifier}" optional>`{title}`</autoref>'


def _roles(obj: griffe.Object | None, text: str) -> str:
    text = _MATH_ROLE.sub(lambda m: r"\(" + m["tex"] + r"\)", text)
    return _XREF_ROLE.sub(lambda m: _xref(obj, m["content"]), text)


def convert(text: str, obj: griffe.Object | None = None) -> str:
    """The Markdown that mkdocstrings should render for the numpydoc docstring ``text``."""
    lines = _split_grouped_parameters(_literal_blocks(_math_blocks(text.splitlines())))
    # Roles (which may wrap over lines) everywhere but in fenced code and $$ blocks.
    segments: list[tuple[bool, list[str]]] = [(False, [])]
    for line in lines:
        verbatim, segment = segments[-1]
        if line.strip() == "$$" or line.strip().startswith("```"):
            if verbatim:
                segment.append(line)
                segments.append((False, []))
            else:
                segments.append((True, [line]))
        else:
            segment.append(line)
    return "\n".join(
        "\n".join(segment) if verbatim else _roles(obj, "\n".join(segment))
        for verbatim, segment in segments
        if segment
    )


# --- name resolution ------------------------------------------------------------------


def _lookup(collection: Any, path: str) -> Any:
    try:
        return collection.get_member(path)
    except Exception:  # any failure means "not known here"
        return None


def _inherited(obj: griffe.Object, name: str) -> str | None:
    """Path of ``name`` as a member (inherited too) of the class that is or holds ``obj``."""
    scope: Any = obj
    while scope is not None and not scope.is_module:
        if scope.is_class:
            try:
                member = scope.all_members.get(name)
                if member is not None:
                    return member.target_path if member.is_alias else member.path
            except Exception:  # unresolvable base classes
                return None
        scope = scope.parent
    return None


def _resolve(obj: griffe.Object | None, name: str) -> str:
    """Full path of ``name`` as seen from ``obj``: its scope, then up its module path."""
    if obj is None:
        return name
    first, dot, rest = name.partition(".")
    try:
        base = obj.resolve(first)
    except Exception:  # griffe.NameResolutionError and alias errors
        base = _inherited(obj, first)
    collection = obj.modules_collection
    if base is None or _lookup(collection, base + dot + rest) is None:
        module = obj.module.path
        while module:
            candidate = f"{module}.{name}"
            if _lookup(collection, candidate) is not None:
                return candidate
            module = module.rpartition(".")[0]
        return name if base is None else base + dot + rest
    return base + dot + rest


# --- the extension --------------------------------------------------------------------


def _objects(obj: griffe.Object) -> Any:
    """``obj`` and every object defined (not imported) under it."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)


def _unshadow(package: griffe.Module) -> None:
    """Point re-exports of a submodule shadowed by a same-named import at that import."""
    moved = {}
    for module in _objects(package):
        if module.is_module:
            for name, target in module.imports.items():
                member = module.members.get(name)
                if member is not None and not member.is_alias and member.is_module \
                        and target != member.path:
                    moved[member.path] = target
    for obj in _objects(package):
        for member in obj.members.values():
            if member.is_alias and member.target_path in moved:
                member.target_path = moved[member.target_path]
                member._target = None  # resolved again on next access


class NumpydocRst(griffe.Extension):
    """Convert the reST of numpydoc docstrings to Markdown once a package is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _unshadow(pkg)
        for obj in _objects(pkg):
            if obj.docstring is not None:
                obj.docstring.value = convert(obj.docstring.value, obj)
