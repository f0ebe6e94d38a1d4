"""Data-derived text (model, class and slice names, ids, values, paths) made safe to show.

Names come from the inputs: a model folder ``model=a|b``, an id holding a newline, a class
called ``<script>``. Two escapers, one per kind of output:

* :func:`one_line` for log and error lines (stderr): the text can never break or forge a line,
  nor reach a terminal as a control sequence;
* :func:`markdown_text` for ``summary.md`` and the tables printed on stdout: GitHub-flavoured
  Markdown renders the literal text, in a table cell, a heading or a list item alike.

JSON output needs neither (``json.dumps`` escapes by construction), nor do the HTML pages
(:mod:`klrank.pipeline.html` escapes for HTML).
"""

_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# ASCII punctuation that GFM or GitHub's renderer can give a meaning inline: code, emphasis,
# links and images, table cells, headings' closing #s, strikethrough, math. A backslash
# before ASCII punctuation always stands for the character itself (CommonMark 2.4).
_MARKDOWN_PUNCTUATION = frozenset("\\`*_[]|#~$")
# Raw HTML, autolinks and entity references start with these: entities show them literally.
_MARKDOWN_ENTITIES = {"<": "&lt;", ">": "&gt;", "&": "&amp;"}


def _escape(char: str) -> str:
    """The backslash escape of one non-printable character, as Python's ``repr`` writes it."""
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def one_line(text: str) -> str:
    r"""``text`` for one line of a log or an error message: ``repr`` without the quotes.

    Every character that is not printable (``str.isprintable``: control characters such as
    newline, carriage return, tab and ESC, the line and paragraph separators U+2028/U+2029,
    format characters such as bidi overrides, non-breaking spaces) becomes its backslash escape,
    and a backslash is doubled, so the result is one line of printable characters from which
    ``text`` can be read back as from a Python string literal. Quotes are kept as they are.

    Examples
    --------
    >>> one_line("model\nforged line")
    'model\\nforged line'
    >>> print(one_line("a\x1b[31mb\u2028c\\d"))
    a\x1b[31mb\u2028c\\d
    """
    return "".join(
        "\\\\" if char == "\\" else char if char.isprintable() else _escape(char) for char in text
    )


def markdown_text(text: str) -> str:
    r"""``text`` as inline Markdown that renders literally, in a table cell or a heading.

    Printable characters render as themselves: ASCII punctuation with a meaning
    (``\ ` * _ [ ] | # ~ $``) gets a backslash, ``< > &`` become entities (so HTML, autolinks
    and entity references show as text, never as markup), and leading or trailing spaces become
    ``&#32;`` (a table cell or heading would drop them). A character that is not printable
    renders as its backslash escape (as in :func:`one_line`: a newline shows as ``\n``), so the
    result never holds a line break and cannot end a table row or start a heading.

    Examples
    --------
    >>> markdown_text("a|b")
    'a\\|b'
    >>> markdown_text("<script>alert(1)</script>")
    '&lt;script&gt;alert(1)&lt;/script&gt;'
    >>> print(markdown_text("x\n# forged heading"))
    x\\n\# forged heading
    """
    parts = []
    for char in text:
        if not char.isprintable():
            parts.append("\\" + _escape(char))  # the escape's backslash, itself escaped
        elif char in _MARKDOWN_PUNCTUATION:
            parts.append("\\" + char)
        else:
            parts.append(_MARKDOWN_ENTITIES.get(char, char))
    body = "".join(parts)
    core = body.strip(" ")
    leading = len(body) - len(body.lstrip(" "))
    trailing = len(body) - leading - len(core)
    return "&#32;" * leading + core + "&#32;" * trailing
