"""Text from the data, shown on a terminal exactly as it is: never as markup, never as
terminal control.

Captions, URLs and reasons come from the input or from servers. Printed through Rich as
a plain ``str`` they are read as Rich markup (``[/bold]`` crashes the print,
``[link=file:///etc/passwd]x[/link]`` becomes a hyperlink), and any control character
they hold goes to the terminal as is (``ESC [2J`` clears the screen, OSC 8 makes a
hyperlink, U+202E reverses the text after it). ``literal()`` is the one way curate shows
such a value: a ``rich.text.Text`` (never parsed as markup) with every control
character replaced by a visible escape.
"""

from __future__ import annotations

import unicodedata

from rich.text import Text

# C0 and C1 controls and DEL (category Cc), format characters such as bidi overrides and
# zero-width spaces (Cf), line and paragraph separators (Zl, Zp), surrogates and private
# use (Cs, Co). U+200D (zero-width joiner) stays: emoji sequences are built with it.
_INVISIBLE = ("Cc", "Cf", "Zl", "Zp", "Cs", "Co")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\x1b"}


def _escape(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(text: str) -> str:
    """``text`` with every control, format and separator character written as an escape
    (``\\x1b``, ``\\n``, ``\\u202e``); everything else, markup brackets included, as is."""
    if text.isprintable():  # the common case: no control, format or separator character
        return text
    return "".join(_escape(c) if c != "\u200d" and unicodedata.category(c) in _INVISIBLE else c for c in text)


def literal(value: object, style: str = "") -> Text:
    """A value as Rich should show it: its text (``str(value)``; None as the empty string),
    controls made visible, no markup, all in ``style``. Pass it to ``Table.add_row`` or
    ``Console.print``."""
    return Text("" if value is None else visible(str(value)), style=style)


def json_visible(text: str) -> str:
    """JSON text (``json.dumps(..., ensure_ascii=False)``) with the characters ``visible``
    escapes written as JSON ``\\u`` escapes instead: the same values, nothing a terminal
    acts on. (JSON already escapes C0 controls itself.)"""
    if text.isprintable():
        return text

    def escape(char: str) -> str:
        if char == "\u200d" or unicodedata.category(char) not in _INVISIBLE:
            return char
        code = ord(char)
        if code < 0x10000:
            return f"\\u{code:04x}"
        code -= 0x10000  # a UTF-16 surrogate pair, as JSON spells characters above U+FFFF
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"

    return "".join(escape(c) for c in text)
