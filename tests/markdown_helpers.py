"""Reading klrank's Markdown back as a reader would, without klrank's own code.

Two independent readings: tables split into cells by GFM's rule (a pipe is a cell boundary
unless a backslash stands right before it), and the whole text rendered by markdown-it-py
(CommonMark with GFM tables and strikethrough), whose tokens say what a reader sees. The docs'
code blocks, links and heading anchors are read from the same tokens.
"""

import itertools
import re
from dataclasses import dataclass

from markdown_it import MarkdownIt
from markdown_it.token import Token

_BOUNDARY = re.compile(r"(?<!\\)\|")


def cells(row: str) -> list[str]:
    """The raw cells of one table row ``| a | b |``: split on pipes with no backslash before."""
    parts = _BOUNDARY.split(row.strip())
    assert parts[0] == "" and parts[-1] == "", f"not a table row: {row!r}"
    return [p.strip() for p in parts[1:-1]]


def raw_tables(markdown: str) -> list[list[list[str]]]:
    """Every table (consecutive lines starting with ``|``) as rows of raw cells, header first.

    The delimiter row is checked and dropped; every row must have the header's cell count.
    """
    tables: list[list[list[str]]] = []
    block: list[str] = []
    for line in [*markdown.split("\n"), ""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if block:
            header, delimiter, *body = (cells(r) for r in block)
            assert all(set(c) <= set("-:") and c for c in delimiter), block[1]
            for row in [delimiter, *body]:
                assert len(row) == len(header), f"{row} does not fit the header {header}"
            tables.append([header, *body])
            block = []
    return tables


@dataclass(frozen=True)
class Rendered:
    """What a Markdown renderer makes of a text: its tables, headings and other paragraphs."""

    tables: list[list[list[str]]]  # rows of cell text, header first
    headings: list[tuple[int, str]]  # (level, text)
    paragraphs: list[str]  # paragraphs and list items, as text
    markup: list[str]  # every token that is not plain text inside a line (HTML, code, emphasis)


def render(markdown: str) -> Rendered:
    """Render ``markdown`` with markdown-it-py and collect the text a reader sees."""
    tokens = MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(markdown)
    tables: list[list[list[str]]] = []
    headings: list[tuple[int, str]] = []
    paragraphs: list[str] = []
    markup = [t.type for t in tokens if t.type in ("html_block", "code_block", "fence", "hr")]
    row: list[str] = []
    context: list[str] = []  # the tags of the open blocks
    for token in tokens:
        if token.type.endswith("_open"):
            context.append(token.tag)
            if token.type == "table_open":
                tables.append([])
            elif token.type == "tr_open":
                row = []
        elif token.type.endswith("_close"):
            context.pop()
            if token.type == "tr_close":
                tables[-1].append(row)
        elif token.type == "inline":
            children = token.children or []
            markup += [c.type for c in children if c.type not in ("text", "softbreak")]
            text = "".join(
                c.content if c.type == "text" else "\n" if c.type == "softbreak" else ""
                for c in children
            )
            if context[-1] in ("td", "th"):
                row.append(text)
            elif re.fullmatch(r"h[1-6]", context[-1]):
                headings.append((int(context[-1][1:]), text))
            else:
                paragraphs.append(text)
    return Rendered(tables, headings, paragraphs, markup)


# ---------------------------------------------------------------------------------------------
# The docs' own structure: fenced blocks, links and heading anchors (tests/test_docs.py)


def _parse(markdown: str) -> list[Token]:
    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(markdown)


@dataclass(frozen=True)
class Block:
    """A code block as a reader sees it: its language, text and the comment right before it."""

    language: str  # the fence's info string; "(indented)" for an indented code block
    text: str
    line: int  # 1-based line of the opening fence
    comment: str | None  # an HTML comment ``<!-- ... -->`` just before the block, its inside


_COMMENT = re.compile(r"<!--\s*(.*?)\s*-->\s*", re.S)


def blocks(markdown: str) -> list[Block]:
    """Every code block of ``markdown``, fenced or indented, in document order."""
    found: list[Block] = []
    previous: Token | None = None
    for token in _parse(markdown):
        if token.type in ("fence", "code_block") and token.map is not None:
            comment = None
            if previous is not None and previous.type == "html_block":
                match = _COMMENT.fullmatch(previous.content)
                comment = match.group(1) if match else None
            language = token.info.strip() if token.type == "fence" else "(indented)"
            found.append(Block(language, token.content, token.map[0] + 1, comment))
        previous = token
    return found


def links(markdown: str) -> list[str]:
    """The targets of every Markdown link (not of URLs inside code)."""
    return [
        str(child.attrs["href"])
        for token in _parse(markdown)
        if token.type == "inline"
        for child in token.children or []
        if child.type == "link_open"
    ]


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings: lower case, punctuation dropped, spaces as ``-``.

    Code spans count with their text; a repeated heading gets ``-1``, ``-2``, ... as on GitHub.
    """
    anchors: set[str] = set()
    tokens = _parse(markdown)
    for opening, inline in itertools.pairwise(tokens):
        if opening.type != "heading_open":
            continue
        text = "".join(
            c.content for c in inline.children or [] if c.type in ("text", "code_inline")
        )
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors
