"""``pipeline.text``: the one-line and Markdown escapers, by hand and as properties.

The Markdown oracle is markdown-it-py (tests/markdown_helpers.py), never klrank's own code; the
one-line oracle is Python's own string-literal parser.
"""

import ast
import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st
from klrank.pipeline import text
from klrank.pipeline.text import markdown_text, one_line
from markdown_helpers import cells, raw_tables, render

# Every kind of character that broke a line or a table, plus ordinary ones.
HOSTILE = st.text(
    st.one_of(
        st.sampled_from(list("|\\`*_[]<>&#~$!:()= \n\r\t\x1b\x00\x7f\x85\xa0\u2028\u2029\u202e")),
        st.characters(),
    ),
    max_size=30,
)


def test_docstring_examples() -> None:
    assert doctest.testmod(text).failed == 0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("plain model-1.2", "plain model-1.2"),
        ("a\nb", r"a\nb"),
        ("a\r\nb\tc", r"a\r\nb\tc"),
        ("\x1b[31mred\x1b[0m", r"\x1b[31mred\x1b[0m"),
        ("line\u2028separator\u2029", r"line\u2028separator\u2029"),
        ("nul\x00 del\x7f nel\x85 nbsp\xa0", r"nul\x00 del\x7f nel\x85 nbsp\xa0"),
        ("bidi\u202eoverride", r"bidi\u202eoverride"),
        ("tag\U000e0041", r"tag\U000e0041"),
        ("C:\\models\\n", r"C:\\models\\n"),  # a literal backslash is doubled
        ('it\'s "quoted"', 'it\'s "quoted"'),
        ("café 日本 😀", "café 日本 😀"),  # printable, whatever the script
        ("", ""),
    ],
)
def test_one_line_by_hand(raw: str, expected: str) -> None:
    assert one_line(raw) == expected


@given(HOSTILE)
def test_one_line_is_one_printable_line_that_reads_back(raw: str) -> None:
    line = one_line(raw)
    assert line.isprintable()  # no newline, no control character, no separator
    assert len(line.splitlines() or [""]) == 1
    # Injective: Python's parser reads the text back from it, as from a string literal.
    assert ast.literal_eval("'" + line.replace("'", "\\'") + "'") == raw


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("region=eu", "region=eu"),
        ("a|b", r"a\|b"),
        ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
        ("x\n# forged heading", r"x\\n\# forged heading"),
        (
            "*bold* _em_ `code` [link](u) ~~s~~ $x$",
            r"\*bold\* \_em\_ \`code\` \[link\](u) \~\~s\~\~ \$x\$",
        ),
        ("back\\slash", r"back\\slash"),
        ("&amp; stays", "&amp;amp; stays"),
        ("\x1b[31m", r"\\x1b\[31m"),
        ("  padded ", "&#32;&#32;padded&#32;"),
        ("   ", "&#32;&#32;&#32;"),
        ("", ""),
    ],
)
def test_markdown_text_by_hand(raw: str, expected: str) -> None:
    assert markdown_text(raw) == expected


def _visible(raw: str) -> str:
    """What a reader should see for ``raw``: printable characters as such, the rest escaped.

    Spelled out from Python's repr, apart from klrank's code.
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in raw)


@given(HOSTILE, HOSTILE)
def test_markdown_cells_render_the_literal_text_and_keep_the_table_shape(
    first: str, second: str
) -> None:
    row = f"| {markdown_text(first)} | {markdown_text(second)} |"
    assert "\n" not in row and row.isprintable()
    assert row.count("|") - row.count("\\|") == 3  # unescaped pipes: columns + 1
    document = f"| a | b |\n|---|---|\n{row}\n"
    assert raw_tables(document) == [[["a", "b"], cells(row)]]
    rendered = render(document)
    assert rendered.markup == []  # no HTML, code, emphasis, link or strikethrough
    assert rendered.tables == [[["a", "b"], [_visible(first), _visible(second)]]]


@given(HOSTILE)
def test_markdown_heading_renders_the_literal_text(raw: str) -> None:
    rendered = render(f"## {markdown_text(raw)}\n\nafter\n")
    assert rendered.markup == []
    assert rendered.headings == [(2, _visible(raw))]
    assert rendered.paragraphs == ["after"]  # nothing leaked out of the heading
