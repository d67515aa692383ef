"""Inline CSS: ``<style>`` rules become ``style=""`` attributes with the browser's cascade.

A webmail client that strips ``<style>`` should show every element as the
browser showed the original page. How:

* css-inline (Rust, html5ever + Servo's selectors) only *matches*: each
  selector of the page's ``<style>`` elements goes to it as a rule holding one
  marker property, over a copy of the page whose start tags carry a numbered
  attribute and no ``style``. Its output says which selectors matched which
  element, on the very tree a browser builds (implied ``<tbody>`` and all).
* The cascade is ours: per element, the declarations of the matched
  selectors in the order of precedence (importance, specificity, source
  order), then the element's own ``style``. They are written in that order,
  so where a declaration is one a browser drops (``font-family: line-height:
  1``, a unitless width in standards mode, a ``-moz-`` gradient), the client
  falls back to the one before it, as the browser's cascade did. Only a
  declaration that is certainly overridden by a later one of the same name
  is left out. ``!important`` of the stylesheet is not carried into
  ``style=""``: the order already gives it precedence, and kept responsive
  ``@media`` rules with ``!important`` can still beat it.
* Rules in ``@media`` that always applies on a screen (``screen``, ``all``,
  ``only screen``, ``not print``: no size or other condition) are inlined
  too. Other ``@media`` rules, ``@font-face``, ``@import``, ``@keyframes`` and
  the rest, and selectors with dynamic pseudo-classes (``:hover``) or
  pseudo-elements, stay in ``<style>``; so do rules whose selector Chromium
  rejects (``:-moz-focusring``: the whole list is invalid there).
* The output is the original HTML with only the changed start tags
  rewritten and the ``<style>`` elements left with what they keep: doctype
  (quirks mode), entities, comments and placeholders stay byte for byte.
* ``width``/``height`` (tables, cells, images), ``bgcolor`` and
  ``align``/``valign`` (table cells) are added where the element lacks them
  and the winning declaration is a plain value; Outlook's Word engine reads
  those. Never ``!important`` in an attribute, never an attribute a browser
  would show differently from the inline style.
* Remote stylesheets are never fetched (``<link>`` stays as it is).
"""

from __future__ import annotations

import codecs
import html as html_lib
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import css_inline

from smtpeter.mime import tree


class InlineError(Exception):
    """The HTML could not be inlined (the caller leaves the message as it was)."""


@dataclass
class Report:
    kept: list[str] = field(default_factory=list)  # rules left in <style> (summaries)
    dropped: list[str] = field(default_factory=list)  # what was thrown away, and why


@dataclass
class Result:
    html: str
    report: Report
    changed: bool


# ----------------------------------------------------------------------------------------------------------
# CSS tokens (CSS Syntax Level 3, enough to find rules, declarations, selectors and bad values)

_CSS_TOKEN = re.compile(
    r"""(?P<comment>/\*.*?(?:\*/|\Z))
      | (?P<ws>\s+)
      | (?P<string>"(?:[^"\\\n]|\\.|\\\n)*(?:"|(?=\n)|\Z)|'(?:[^'\\\n]|\\.|\\\n)*(?:'|(?=\n)|\Z))
      | (?P<url>url\(\s*(?:[^"'()\\\s]|\\.)*\s*\))
      | (?P<function>-?(?:[A-Za-z_\x80-\U0010ffff]|--|\\.)(?:[\w\-\x80-\U0010ffff]|\\.)*\()
      | (?P<atkeyword>@-?(?:[A-Za-z_\x80-\U0010ffff]|-|\\.)(?:[\w\-\x80-\U0010ffff]|\\.)*)
      | (?P<hash>\#(?:[\w\-\x80-\U0010ffff]|\\.)+)
      | (?P<number>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?
            (?:%|-?(?:[A-Za-z_\x80-\U0010ffff]|\\.)(?:[\w\-\x80-\U0010ffff]|\\.)*)?)
      | (?P<cdo><!--|-->)
      | (?P<ident>-?(?:[A-Za-z_\x80-\U0010ffff]|--|\\.)(?:[\w\-\x80-\U0010ffff]|\\.)*)
      | (?P<delim>.)
    """, re.X | re.S)
_OPEN = {"(": ")", "[": "]", "{": "}"}


@dataclass
class Token:
    kind: str  # comment ws string badstring url function atkeyword hash number cdo ident delim
    text: str
    start: int
    end: int


def css_tokens(text: str) -> list[Token]:
    tokens = []
    for match in _CSS_TOKEN.finditer(text):
        kind = match.lastgroup or "delim"
        value = match.group()
        if kind == "string" and (len(value) < 2 or value[-1] != value[0] or (value.endswith("\\" + value[0])
                                 and _odd_backslashes(value[:-1]))):
            kind = "badstring"
        tokens.append(Token(kind, value, match.start(), match.end()))
    return tokens


def _odd_backslashes(text: str) -> bool:
    return (len(text) - len(text.rstrip("\\"))) % 2 == 1


@dataclass
class Block:
    """Tokens of a {} block, with its source span (the braces included)."""

    tokens: list[Token]
    start: int
    end: int


@dataclass
class Rule:
    """A top-level item of a stylesheet or of a block: ``at`` rule or ``qualified`` rule."""

    kind: str
    prelude: list[Token]
    block: Block | None
    start: int
    end: int
    name: str = ""  # at-rule name, lower case, without "@"


def _consume_block(tokens: list[Token], index: int) -> tuple[int, int]:
    """From an opening bracket at ``index``: (index past its closing bracket, end offset)."""
    stack = [_OPEN[tokens[index].text]]
    index += 1
    while index < len(tokens):
        token = tokens[index]
        if token.kind == "function":
            stack.append(")")
        elif token.kind == "delim":
            if token.text in _OPEN:
                stack.append(_OPEN[token.text])
            elif token.text == stack[-1]:
                stack.pop()
                if not stack:
                    return index + 1, token.end
        index += 1
    return index, tokens[-1].end if tokens else 0


def parse_rules(tokens: list[Token], top_level: bool) -> list[Rule]:
    """A list of rules (CSS Syntax §5.4.1), keeping each one's tokens and source span."""
    rules: list[Rule] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token.kind in ("ws", "comment") or (top_level and token.kind == "cdo"):
            index += 1
            continue
        start = token.start
        if token.kind == "atkeyword":
            name = token.text[1:].lower()
            prelude: list[Token] = []
            index += 1
            while index < len(tokens):
                token = tokens[index]
                if token.kind == "delim" and token.text == ";":
                    rules.append(Rule("at", prelude, None, start, token.end, name))
                    index += 1
                    break
                if token.kind == "delim" and token.text == "{":
                    after, end = _consume_block(tokens, index)
                    rules.append(Rule("at", prelude, Block(tokens[index + 1:after - 1], token.start, end),
                                      start, end, name))
                    index = after
                    break
                index = _skip_component(tokens, index, prelude)
            else:
                rules.append(Rule("at", prelude, None, start, tokens[-1].end, name))
            continue
        prelude = []
        while index < len(tokens):
            token = tokens[index]
            if token.kind == "delim" and token.text == "{":
                after, end = _consume_block(tokens, index)
                rules.append(Rule("qualified", prelude, Block(tokens[index + 1:after - 1], token.start, end),
                                  start, end))
                index = after
                break
            index = _skip_component(tokens, index, prelude)
        # a qualified rule without a block at the end is dropped (a parse error)
    return rules


def _skip_component(tokens: list[Token], index: int, into: list[Token]) -> int:
    token = tokens[index]
    if token.kind == "function" or (token.kind == "delim" and token.text in ("(", "[")):
        if token.kind == "function":
            tokens_copy = [Token("delim", "(", token.start, token.end), *tokens[index + 1:]]
            after, _ = _consume_block(tokens_copy, 0)
            after += index
        else:
            after, _ = _consume_block(tokens, index)
        into.extend(tokens[index:after])
        return after
    into.append(token)
    return index + 1


@dataclass
class Declaration:
    name: str  # lower case, except custom properties (--x), which are case-sensitive
    value: str  # source text of the value, without !important, trimmed
    important: bool
    certain: bool  # a browser certainly keeps it (else a declaration before it of the same name stays)


def parse_declarations(tokens: list[Token], text: str, nested: list[Rule] | None = None,
                       ) -> tuple[list[Declaration], list[str]]:
    """Declarations of a style block or attribute; the second list says what was dropped as malformed.

    Rules nested in a style block (CSS nesting) go to ``nested`` when it is given.
    """
    declarations, dropped = [], []
    pieces: list[list[Token]] = [[]]
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token.kind == "delim" and token.text == ";":
            pieces.append([])
            index += 1
            continue
        index = _skip_component(tokens, index, pieces[-1])
        if pieces[-1] and pieces[-1][-1].kind == "delim" and pieces[-1][-1].text == "{":
            # a {} block: a nested rule (CSS nesting) or junk; the block belongs to this piece
            after, _ = _consume_block(tokens, index - 1)
            pieces[-1].extend(tokens[index:after])
            index = after
            pieces.append([])
    for piece in pieces:
        meaningful = [t for t in piece if t.kind not in ("ws", "comment")]
        if not meaningful:
            continue
        source = text[piece[0].start:piece[-1].end].strip()
        if nested is not None and meaningful[-1].kind == "delim" and meaningful[-1].text == "}":
            rules = parse_rules(piece, top_level=False)
            if rules and (rules[0].kind == "qualified" or rules[0].name == "media"):
                nested.append(rules[0])
                continue
        if (len(meaningful) < 2 or meaningful[0].kind != "ident" or meaningful[1].kind != "delim"
                or meaningful[1].text != ":"):
            dropped.append(f"malformed declaration {_short(source)!r}")
            continue
        name = meaningful[0].text
        colon = meaningful[1]
        value_tokens = [t for t in piece if t.start >= colon.end]
        important = False
        significant = [t for t in value_tokens if t.kind not in ("ws", "comment")]
        if (len(significant) >= 2
                and significant[-1].kind == "ident" and significant[-1].text.lower() == "important"
                and significant[-2].kind == "delim" and significant[-2].text == "!"):
            important = True
            value_tokens = [t for t in value_tokens if t.start < significant[-2].start]
            significant = significant[:-2]
        value = "".join(t.text for t in value_tokens if t.kind != "comment").strip()
        if not name.startswith("--"):
            name = name.lower()
            if not significant:
                dropped.append(f"empty declaration {_short(source)!r}")
                continue
        declarations.append(Declaration(name, value, important, _certain(name, significant)))
    return declarations, dropped


# Properties that take a plain number (other properties need a unit except for 0, in standards mode).
_NUMBER_PROPERTIES = frozenset("""
    line-height font-weight opacity z-index order flex flex-grow flex-shrink orphans widows zoom
    column-count tab-size -webkit-line-clamp fill-opacity stroke-opacity stroke-width stroke-miterlimit
    font-size-adjust counter-increment counter-reset counter-set animation-iteration-count
    initial-letter aspect-ratio scale shape-image-threshold stop-opacity flood-opacity
    -webkit-box-flex -webkit-flex -ms-flex mso-line-height-alt font-variation-settings
    font-feature-settings grid-row grid-column grid-row-start grid-row-end grid-column-start
    grid-column-end grid-area math-depth hyphenate-limit-chars
""".split())


def _certain(name: str, tokens: list[Token]) -> bool:
    """Whether a browser keeps this declaration for sure (a cheap test: no means "maybe not")."""
    if name.startswith("--"):
        return True
    depth = 0
    for token in tokens:
        if token.kind == "function" or (token.kind == "delim" and token.text in "(["):
            depth += 1
        elif token.kind == "delim" and token.text in ")]":
            depth -= 1
        if token.kind in ("badstring", "cdo") or (token.kind == "url" and token.text.count("(") > 1):
            return False
        if token.kind == "delim" and token.text in ":;{}!=<>\\":
            return False
        if token.kind == "function" and token.text.startswith("-") and not token.text.startswith("-webkit-"):
            return False
        if token.kind == "function" and token.text.lower() in ("expression(", "progid("):
            return False
        if (token.kind == "number" and not depth and name not in _NUMBER_PROPERTIES
                and re.fullmatch(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", token.text)
                and float(token.text) != 0):
            return False
    return True


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


# ----------------------------------------------------------------------------------------------------------
# Selectors: validity as Chromium sees it, what can be inlined, specificity, the form css-inline matches

# Matched on the page as it is (css-inline matches them too, :is/:where are expanded for it).
_STATIC_PSEUDO_CLASSES = frozenset("""
    first-child last-child only-child first-of-type last-of-type only-of-type nth-child nth-last-child
    nth-of-type nth-last-of-type not is where matches -webkit-any root empty link any-link -webkit-any-link
    checked disabled enabled
""".split())
# Depend on the reader (pointer, focus, history, form state) or on what css-inline cannot match:
# the rule stays in <style>.
_KEPT_PSEUDO_CLASSES = frozenset("""
    hover active focus focus-within focus-visible visited target target-within scope placeholder-shown
    autofill -webkit-autofill default indeterminate valid invalid in-range out-of-range required optional
    read-only read-write user-valid user-invalid fullscreen -webkit-full-screen modal popover-open open
    closed defined playing paused seeking buffering stalled muted volume-locked picture-in-picture
    has lang dir host host-context state past current future blank -webkit-drag window-inactive
    horizontal vertical decrement increment start end double-button single-button no-button
    corner-present xr-overlay
""".split())
_LEGACY_PSEUDO_ELEMENTS = frozenset(("before", "after", "first-line", "first-letter"))
_PSEUDO_ELEMENTS = frozenset("""
    before after first-line first-letter marker placeholder selection backdrop file-selector-button
    cue cue-region part slotted grammar-error spelling-error target-text highlight view-transition
    view-transition-group view-transition-image-pair view-transition-old view-transition-new
    details-content column scroll-marker scroll-marker-group scroll-button checkmark picker-icon picker
""".split())


@dataclass
class Selector:
    text: str
    specificity: tuple[int, int, int]
    inline: bool  # matched on the page as it is (else it stays in <style>)
    matching: list[str]  # alternatives for css-inline (:is/:where expanded)


class InvalidSelector(Exception):
    pass


def split_commas(tokens: list[Token]) -> list[list[Token]]:
    parts: list[list[Token]] = [[]]
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token.kind == "delim" and token.text == ",":
            parts.append([])
            index += 1
            continue
        index = _skip_component(tokens, index, parts[-1])
    return parts


def _text(tokens: list[Token]) -> str:
    return "".join(t.text for t in tokens if t.kind != "comment").strip()


def parse_selector_list(tokens: list[Token]) -> list[Selector]:
    """The selectors of a rule's prelude; raises InvalidSelector when Chromium drops the whole rule."""
    selectors = []
    for part in split_commas(tokens):
        part = [t for t in part if t.kind != "comment"]
        if not _text(part):
            raise InvalidSelector("empty selector")
        specificity, inline = _analyse(part)
        selectors.append(Selector(_text(part), specificity, inline, _expand(part)))
    return selectors


def _analyse(tokens: list[Token]) -> tuple[tuple[int, int, int], bool]:
    """(specificity, inlinable) of one complex selector; raises InvalidSelector."""
    a = b = c = 0
    inline = True
    index = 0
    previous_compound = False
    while index < len(tokens):
        token = tokens[index]
        kind, text = token.kind, token.text
        if kind == "hash":
            a += 1
        elif kind == "ident":
            c += 1
        elif kind == "delim" and text == "*":
            pass
        elif kind == "delim" and text == ".":
            if index + 1 >= len(tokens) or tokens[index + 1].kind != "ident":
                raise InvalidSelector("a '.' without a class name")
            b += 1
            index += 1
        elif kind == "delim" and text == "[":
            after, _ = _consume_block(tokens, index)
            inner = [t for t in tokens[index + 1:after - 1] if t.kind != "ws"]
            if not inner or (inner[0].kind != "ident"
                             and not (inner[0].kind == "delim" and inner[0].text in "*|")):
                raise InvalidSelector("a malformed attribute selector")
            b += 1
            index = after
            continue
        elif kind == "delim" and text == ":":
            if (index + 1 < len(tokens)
                    and tokens[index + 1].kind == "delim" and tokens[index + 1].text == ":"):
                name_token = tokens[index + 2] if index + 2 < len(tokens) else None
                if name_token is None or name_token.kind not in ("ident", "function"):
                    raise InvalidSelector("a '::' without a name")
                name = name_token.text.rstrip("(").lower()
                if name not in _PSEUDO_ELEMENTS and not name.startswith("-webkit-"):
                    raise InvalidSelector(f"unknown pseudo-element ::{name}")
                c += 1
                inline = False
                index += 3
                if name_token.kind == "function":
                    index = _skip_function(tokens, index - 1)
                continue
            name_token = tokens[index + 1] if index + 1 < len(tokens) else None
            if name_token is None or name_token.kind not in ("ident", "function"):
                raise InvalidSelector("a ':' without a name")
            name = name_token.text.rstrip("(").lower()
            if name_token.kind == "ident" and name in _LEGACY_PSEUDO_ELEMENTS:
                c += 1
                inline = False
                index += 2
                continue
            if name_token.kind == "function":
                after = _skip_function(tokens, index + 1)
                arguments = tokens[index + 2:after - 1]
                if name in ("not", "is", "matches", "-webkit-any", "where", "has"):
                    inner = [_analyse([t for t in p if t.kind != "comment"]) for p in split_commas(arguments)
                             if _text(p) or name not in ("is", "where")]
                    if not inner and name not in ("is", "where"):
                        raise InvalidSelector(f"empty :{name}()")
                    if name != "where" and inner:
                        best = max(s for s, _ in inner)
                        a, b, c = a + best[0], b + best[1], c + best[2]
                    if name in ("not", "has") and not all(ok for _, ok in inner):
                        inline = False
                    if name in ("is", "where", "matches", "-webkit-any") and not all(ok for _, ok in inner):
                        inline = False
                    if name == "has":
                        inline = False
                elif name in ("nth-child", "nth-last-child", "nth-of-type", "nth-last-of-type"):
                    b += 1
                    of = [i for i, t in enumerate(arguments) if t.kind == "ident" and t.text.lower() == "of"]
                    if of:
                        inline = False  # css-inline does not know "of S"
                        inner_tokens = arguments[of[0] + 1:]
                        best = max(_analyse(p)[0] for p in split_commas(inner_tokens))
                        a, b, c = a + best[0], b + best[1], c + best[2]
                elif name in _KEPT_PSEUDO_CLASSES or name in ("host", "host-context", "state", "cue", "part"):
                    b += 1
                    inline = False
                else:
                    raise InvalidSelector(f"unknown pseudo-class :{name}()")
                index = after
                continue
            if (name in _STATIC_PSEUDO_CLASSES
                    and name not in ("not", "is", "where", "matches", "-webkit-any")):
                b += 1
            elif name in _KEPT_PSEUDO_CLASSES:
                b += 1
                inline = False
            elif name.startswith("-webkit-") and name in ("-webkit-any-link",):
                b += 1
            else:
                raise InvalidSelector(f"unknown pseudo-class :{name}")
            index += 2
            continue
        elif kind == "delim" and text in ">+~":
            pass
        elif kind == "delim" and text == "|":
            pass
        elif kind == "ws":
            pass
        elif kind == "function":
            raise InvalidSelector(f"unexpected {text}")
        else:
            raise InvalidSelector(f"unexpected {text!r}")
        previous_compound = True
        index += 1
    del previous_compound
    return (a, b, c), inline


def _skip_function(tokens: list[Token], index: int) -> int:
    """From a function token at ``index``: the index past its closing parenthesis."""
    depth = 0
    while index < len(tokens):
        token = tokens[index]
        if token.kind == "function" or (token.kind == "delim" and token.text in "(["):
            depth += 1
        elif token.kind == "delim" and token.text in ")]":
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return index


def _expand(tokens: list[Token]) -> list[str]:
    """The selector as alternatives css-inline can match: :is()/:where()/:matches() distributed."""
    for index, token in enumerate(tokens):
        if token.kind == "function" and token.text.lower() in ("is(", "where(", "matches(", "-webkit-any("):
            if index > 0 and tokens[index - 1].kind == "delim" and tokens[index - 1].text == ":":
                after = _skip_function(tokens, index)
                head, tail = tokens[:index - 1], tokens[after:]
                out = []
                for argument in split_commas(tokens[index + 1:after - 1]):
                    if not _text(argument):
                        continue
                    for rest in _expand(tail) if tail else [""]:
                        for inner in _expand(argument):
                            out.append(_raw(head) + inner + rest)
                return out[:64]
    return [_raw(tokens)]


def _raw(tokens: list[Token]) -> str:
    return "".join(t.text for t in tokens if t.kind != "comment")


# ----------------------------------------------------------------------------------------------------------
# HTML: the start tags, <style> elements and doctype of a page, found as the HTML tokenizer finds them

_WS = "\t\n\f\r "
_TAG_NAME = re.compile(r"[^\t\n\f\r />]*")
_ATTRIBUTE = re.compile(
    r"""[\t\n\f\r /]*(?:(?P<name>[^\t\n\f\r />][^\t\n\f\r />=]*)
        (?:[\t\n\f\r ]*=[\t\n\f\r ]*(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<uq>[^\t\n\f\r >]*)))?)?""", re.X)
_RAW_TEXT = frozenset(("style", "script", "xmp", "iframe", "noembed", "noframes", "textarea", "title"))
_COMMENT_END = re.compile(r"--!?>")


@dataclass
class Attribute:
    name: str  # lower case
    value: str  # as written (character references not decoded)
    start: int  # the attribute's span in the page, leading white space excluded
    end: int
    value_start: int
    value_end: int


@dataclass
class StartTag:
    name: str
    start: int
    end: int  # past ">"
    name_end: int
    attributes: dict[str, Attribute]  # the first of each name, as browsers keep it
    in_template: bool = False
    in_foreign: bool = False

    def value(self, name: str) -> str | None:
        attribute = self.attributes.get(name)
        return None if attribute is None else html_lib.unescape(attribute.value)


@dataclass
class StyleElement:
    tag: StartTag
    content_start: int
    content_end: int
    end: int  # past the end tag (or the end of the page)


@dataclass
class Page:
    text: str
    tags: list[StartTag]
    styles: list[StyleElement]
    doctype: str | None


def scan_html(text: str) -> Page:
    tags: list[StartTag] = []
    styles: list[StyleElement] = []
    doctype: str | None = None
    seen_tag = False
    template_depth = foreign_depth = 0
    position, length = 0, len(text)
    while True:
        position = text.find("<", position)
        if position < 0 or position + 1 >= length:
            break
        following = text[position + 1]
        if text.startswith("<!--", position):
            if text.startswith(">", position + 4) or text.startswith("->", position + 4):
                position = text.find(">", position + 4) + 1
                continue
            found = _COMMENT_END.search(text, position + 4)
            position = found.end() if found else length
            continue
        if following in "!?":
            end = text.find(">", position)
            end = length if end < 0 else end + 1
            if not seen_tag and doctype is None and text[position + 2:position + 9].lower() == "doctype":
                doctype = text[position:end]
            position = end
            continue
        if following == "/":
            if position + 2 < length and text[position + 2].isascii() and text[position + 2].isalpha():
                name_match = _TAG_NAME.match(text, position + 2)
                name = name_match.group().lower()
                end = _tag_end(text, name_match.end())
                if end is None:
                    break
                if name == "template" and template_depth:
                    template_depth -= 1
                elif name in ("svg", "math") and foreign_depth:
                    foreign_depth -= 1
                position = end
            else:
                end = text.find(">", position)
                position = length if end < 0 else end + 1
            continue
        if not (following.isascii() and following.isalpha()):
            position += 1
            continue
        name_match = _TAG_NAME.match(text, position + 1)
        name = name_match.group().lower()
        attributes: dict[str, Attribute] = {}
        cursor = name_match.end()
        while True:
            match = _ATTRIBUTE.match(text, cursor)
            cursor = match.end()
            if match.group("name") is None:
                break
            attr_name = match.group("name").lower()
            for group in ("dq", "sq", "uq"):
                if match.group(group) is not None:
                    value, value_start, value_end = match.group(group), match.start(group), match.end(group)
                    break
            else:
                value, value_start, value_end = "", match.end(), match.end()
            if attr_name not in attributes:
                attributes[attr_name] = Attribute(attr_name, value, match.start("name"), match.end(),
                                                  value_start, value_end)
        if cursor >= length or text[cursor] != ">":
            break  # the page ends inside a tag: browsers drop that tag
        end = cursor + 1
        seen_tag = True
        tag = StartTag(name, position, end, name_match.end(), attributes,
                       template_depth > 0, foreign_depth > 0)
        tags.append(tag)
        self_closing = text[cursor - 1] == "/"
        position = end
        if name == "template":
            template_depth += 1
        elif name in ("svg", "math") and not self_closing:
            foreign_depth += 1
        elif name in _RAW_TEXT and not tag.in_foreign:
            close = re.compile(r"</" + name + r"[\t\n\f\r />]", re.I).search(text, end)
            content_end = close.start() if close else length
            if close:
                end_tag = _tag_end(text, close.start() + 2 + len(name))
                after = end_tag if end_tag is not None else length
            else:
                after = length
            if name == "style":
                styles.append(StyleElement(tag, end, content_end, after))
            position = after
        elif name == "plaintext":
            break
    return Page(text, tags, styles, doctype)


def _tag_end(text: str, cursor: int) -> int | None:
    """Past the ">" of a tag whose attributes start at ``cursor`` (quotes honoured); None at the end."""
    while True:
        match = _ATTRIBUTE.match(text, cursor)
        cursor = match.end()
        if match.group("name") is None:
            break
    return cursor + 1 if cursor < len(text) and text[cursor] == ">" else None


# The public identifiers that put a page in quirks mode (HTML §13.2.6.4.1), by prefix.
_QUIRKS_PREFIXES = (
    "+//silmaril//dtd html pro v0r11 19970101//", "-//as//dtd html 3.0 aswedit + extensions//",
    "-//advasoft ltd//dtd html 3.0 aswedit + extensions//", "-//ietf//dtd html 2.0 level 1//",
    "-//ietf//dtd html 2.0 level 2//", "-//ietf//dtd html 2.0 strict level 1//",
    "-//ietf//dtd html 2.0 strict level 2//", "-//ietf//dtd html 2.0 strict//", "-//ietf//dtd html 2.0//",
    "-//ietf//dtd html 2.1e//", "-//ietf//dtd html 3.0//", "-//ietf//dtd html 3.2 final//",
    "-//ietf//dtd html 3.2//", "-//ietf//dtd html 3//", "-//ietf//dtd html level 0//",
    "-//ietf//dtd html level 1//", "-//ietf//dtd html level 2//", "-//ietf//dtd html level 3//",
    "-//ietf//dtd html strict level 0//", "-//ietf//dtd html strict level 1//",
    "-//ietf//dtd html strict level 2//", "-//ietf//dtd html strict level 3//", "-//ietf//dtd html strict//",
    "-//ietf//dtd html//", "-//metrius//dtd metrius presentational//",
    "-//microsoft//dtd internet explorer 2.0 html strict//", "-//microsoft//dtd internet explorer 2.0 html//",
    "-//microsoft//dtd internet explorer 2.0 tables//",
    "-//microsoft//dtd internet explorer 3.0 html strict//",
    "-//microsoft//dtd internet explorer 3.0 html//", "-//microsoft//dtd internet explorer 3.0 tables//",
    "-//netscape comm. corp.//dtd html//", "-//netscape comm. corp.//dtd strict html//",
    "-//o'reilly and associates//dtd html 2.0//", "-//o'reilly and associates//dtd html extended 1.0//",
    "-//o'reilly and associates//dtd html extended relaxed 1.0//",
    "-//sq//dtd html 2.0 hotmetal + extensions//",
    "-//softquad software//dtd hotmetal pro 6.0::19990601::extensions to html 4.0//",
    "-//softquad//dtd hotmetal pro 4.0::19971010::extensions to html 4.0//",
    "-//spyglass//dtd html 2.0 extended//", "-//sun microsystems corp.//dtd hotjava html//",
    "-//sun microsystems corp.//dtd hotjava strict html//", "-//w3c//dtd html 3 1995-03-24//",
    "-//w3c//dtd html 3.2 draft//", "-//w3c//dtd html 3.2 final//", "-//w3c//dtd html 3.2//",
    "-//w3c//dtd html 3.2s draft//", "-//w3c//dtd html 4.0 frameset//", "-//w3c//dtd html 4.0 transitional//",
    "-//w3c//dtd html experimental 19960712//", "-//w3c//dtd html experimental 970421//",
    "-//w3c//dtd w3 html//", "-//w3o//dtd w3 html 3.0//", "-//webtechs//dtd mozilla html 2.0//",
    "-//webtechs//dtd mozilla html//",
)
_DOCTYPE = re.compile(r"""<!doctype[\t\n\f\r ]*([^\t\n\f\r >]*)[\t\n\f\r ]*
    (?:public[\t\n\f\r ]*(?:"([^"]*)"?|'([^']*)'?)[\t\n\f\r ]*)?
    (?:(?:system[\t\n\f\r ]*)?(?:"([^"]*)"|'([^']*)'))?""", re.I | re.X)


def is_quirks(doctype: str | None) -> bool:
    """Whether the page renders in quirks mode, where class and id selectors ignore case."""
    if doctype is None:
        return True
    match = _DOCTYPE.match(doctype)
    if not match or match.group(1).lower() != "html":
        return True
    public = (match.group(2) if match.group(2) is not None else match.group(3) or "").lower()
    has_system = match.group(4) is not None or match.group(5) is not None
    system = (match.group(4) or match.group(5) or "").lower()
    if public in ("-//w3o//dtd w3 html strict 3.0//en//", "-/w3c/dtd html 4.0 transitional/en", "html"):
        return True
    if system == "http://www.ibm.com/data/dtd/v11/ibmxhtml1-transitional.dtd":
        return True
    if public.startswith(_QUIRKS_PREFIXES):
        return True
    return not has_system and public.startswith(("-//w3c//dtd html 4.01 frameset//",
                                                 "-//w3c//dtd html 4.01 transitional//"))


# ----------------------------------------------------------------------------------------------------------
# Media queries

_SCREEN_TYPES = frozenset(("all", "screen"))


def always_on_screen(tokens: list[Token]) -> bool:
    """Whether a media query list matches on every screen (no size or other condition)."""
    queries = split_commas(tokens)
    for query in queries:
        words = [t for t in query if t.kind not in ("ws", "comment")]
        if not words:
            if len(queries) == 1:
                return True  # an empty list is "all"
            continue
        negated = False
        if words[0].kind == "ident" and words[0].text.lower() in ("only", "not"):
            negated = words[0].text.lower() == "not"
            words = words[1:]
        if not words or words[0].kind != "ident":
            continue
        media_type = words[0].text.lower()
        rest = words[1:]
        if media_type in ("and", "or", "not", "only", "layer"):
            continue
        if negated:
            if media_type not in _SCREEN_TYPES and media_type in _KNOWN_TYPES:
                return True
            continue
        if media_type in _SCREEN_TYPES and not rest:
            return True
    return False


_KNOWN_TYPES = frozenset(("all", "screen", "print", "speech", "tty", "tv", "projection", "handheld",
                          "braille", "embossed", "aural"))


# ----------------------------------------------------------------------------------------------------------
# The inliner

@dataclass
class _Inlined:
    """One selector whose declarations go inline."""

    specificity: tuple[int, int, int]
    order: int
    declarations: list[Declaration]


class _Sheet:
    """The page's stylesheets split into what goes inline and what each <style> keeps."""

    def __init__(self, page: Page, quirks: bool, report: Report) -> None:
        self.page = page
        self.quirks = quirks
        self.report = report
        self.inlined: list[_Inlined] = []
        self.matching: list[tuple[str, int]] = []  # (selector for css-inline, index into inlined)
        self.kept: dict[int, str] = {}  # style element index -> CSS it keeps

    def add_style(self, index: int, css: str) -> None:
        tokens = css_tokens(css)
        kept = self._rules(parse_rules(tokens, top_level=True), css)
        self.kept[index] = "".join(kept)

    def _rules(self, rules: list[Rule], css: str) -> list[str]:
        kept: list[str] = []
        for rule in rules:
            source = css[rule.start:rule.end]
            if rule.kind == "qualified":
                kept.extend(self._qualified(rule, css, source))
            elif rule.name == "charset":
                continue
            elif rule.name == "media" and rule.block is not None and always_on_screen(rule.prelude):
                inner = self._rules(parse_rules(rule.block.tokens, top_level=False), css)
                if inner:
                    kept.append(f"{css[rule.start:rule.block.start]}{{{''.join(inner)}\n}}\n")
            else:
                kept.append(source.strip() + "\n")
                label = f"@{rule.name} {_short(_text(rule.prelude), 60)}".strip()
                self.report.kept.append(label)
        return kept

    def _qualified(self, rule: Rule, css: str, source: str) -> list[str]:
        assert rule.block is not None
        prelude = _text(rule.prelude)
        try:
            selectors = parse_selector_list(rule.prelude)
        except InvalidSelector as exc:
            self.report.kept.append(f"{_short(prelude, 60)} (not inlined: {exc})")
            return [source.strip() + "\n"]
        nested: list[Rule] = []
        declarations, dropped = parse_declarations(rule.block.tokens, css, nested)
        for reason in dropped:
            self.report.dropped.append(f"{_short(prelude, 60)}: {reason}")
        if nested:
            # CSS nesting, written out flat: "&" is the parent, a rule without "&" is a descendant
            parent = ", ".join(s.text for s in selectors)
            body = "; ".join(f"{d.name}: {d.value}{' !important' if d.important else ''}"
                             for d in declarations)
            flat = [f"{parent} {{{body}}}"]
            for inner in nested:
                flat.append(_flatten(inner, parent, css))
            return self._rules(parse_rules(css_tokens("\n".join(flat)), top_level=True), "\n".join(flat))
        block_text = css[rule.block.start:rule.block.end]
        stays = [s.text for s in selectors if not s.inline]
        for selector in selectors:
            if not selector.inline or not declarations:
                continue
            self.inlined.append(_Inlined(selector.specificity, len(self.inlined), declarations))
            matching = selector.matching
            if self.quirks:
                matching = [_fold_case(m) for m in matching]
            self.matching.extend((m, len(self.inlined) - 1) for m in matching)
        if stays:
            self.report.kept.append(", ".join(stays))
            return [f"{', '.join(stays)} {block_text}\n"]
        return []


def _flatten(rule: Rule, parent: str, css: str) -> str:
    """A nested rule (or @media) as a top-level one, under the parent selector list."""
    assert rule.block is not None
    inner = css[rule.block.start + 1:rule.block.end - 1]
    if rule.kind == "at":
        return f"@media {_text(rule.prelude)} {{ {parent} {{{inner}}} }}"
    selectors = []
    for part in split_commas(rule.prelude):
        text = _raw(part).strip()
        if "&" in text:
            selectors.append(text.replace("&", f":is({parent})"))
        else:
            selectors.append(f":is({parent}) {text}")
    return f"{', '.join(selectors)} {{{inner}}}"


def _fold_case(selector: str) -> str:
    """Class and id names in lower case (quirks mode matches them whatever their case)."""
    tokens = css_tokens(selector)
    out = []
    for index, token in enumerate(tokens):
        lower = token.kind == "hash" or (token.kind == "ident" and index and tokens[index - 1].text == ".")
        out.append(token.text.lower() if lower else token.text)
    return "".join(out)


def _style_applies(style: StyleElement) -> bool:
    tag = style.tag
    if tag.in_template or tag.in_foreign:
        return False
    kind = tag.value("type")
    if kind is not None and kind.strip(_WS).lower() not in ("", "text/css"):
        return False
    if (tag.value("data-css-inline") or "").lower() == "ignore":
        return False
    media = tag.value("media")
    return media is None or always_on_screen(css_tokens(media))


_OUTPUT_TAG = re.compile(r"""<(/?)([A-Za-z][^\t\n\f\r />]*)((?:[\t\n\f\r ]+[^\t\n\f\r />=]+(?:="[^"]*")?)*)
                             [\t\n\f\r ]*/?>|<!--.*?-->|<![^>]*>""", re.X | re.S)
_VOID = frozenset("""area base br col embed hr img input link meta source track wbr param keygen basefont
                     bgsound frame""".split())
_RAW_OUTPUT = frozenset(("script", "style", "xmp", "iframe", "noembed", "noframes", "noscript", "plaintext"))
# Elements a parser makes without a tag of their own, that we may write a tag for.
_IMPLIABLE = frozenset(("html", "body", "tbody", "tr", "colgroup"))


def inline_html(text: str, extra_css: str = "") -> Result:
    """Inline the ``<style>`` rules of an HTML page (and ``extra_css`` after them).

    Raises InlineError when that cannot be done.
    """
    report = Report()
    page = scan_html(text)
    styles = [(index, style) for index, style in enumerate(page.styles) if _style_applies(style)]
    if not styles and not extra_css.strip():
        return Result(text, report, changed=False)
    sheet = _Sheet(page, is_quirks(page.doctype), report)
    for index, style in styles:
        sheet.add_style(index, text[style.content_start:style.content_end])
    if extra_css.strip():
        sheet.add_style(-1, extra_css)
    styled = _match(page, sheet, secrets.token_hex(4)) if sheet.inlined else {}
    return Result(_write(page, sheet, styles, styled), report, changed=True)


def _match(page: Page, sheet: _Sheet, nonce: str) -> dict[int, list[int]]:
    """Which inlined selectors match each start tag (by index), as css-inline finds them."""
    text = page.text
    mark, prop = f"data-smtpeter-{nonce}", f"x-smtpeter-{nonce}-"
    pieces, position = [], 0
    style_content = {style.content_start: style.content_end for style in page.styles}
    for number, tag in enumerate(page.tags):
        pieces.append(text[position:tag.name_end])
        pieces.append(f' {mark}="{number}"')
        position = tag.name_end
        for name, attribute in sorted(tag.attributes.items(), key=lambda item: item[1].start):
            if name == "style" or (name == "href" and tag.name == "link"):
                pieces.append(text[position:attribute.start])
                position = attribute.end
            elif sheet.quirks and name in ("class", "id"):
                pieces.append(text[position:attribute.value_start])
                pieces.append(attribute.value.lower())
                position = attribute.value_end
        pieces.append(text[position:tag.end])
        position = tag.end
        if tag.end in style_content:  # no CSS of the page's own goes to css-inline
            position = style_content[tag.end]
    pieces.append(text[position:])
    css = "".join(f"{selector}{{{prop}{index}:1}}\n" for selector, index in sheet.matching)
    try:
        inliner = css_inline.CSSInliner(load_remote_stylesheets=False, keep_style_tags=False,
                                        extra_css=css)
        output = inliner.inline("".join(pieces))
    except (css_inline.InlineError, ValueError) as exc:
        raise InlineError(f"css-inline: {exc}") from None
    return _read_matches(output, page, sheet, mark, prop)


def _read_matches(output: str, page: Page, sheet: _Sheet, mark: str, prop: str) -> dict[int, list[int]]:
    """Tag index -> matched selectors, from css-inline's output; implied elements that matched
    (an <html>, <body> or <tbody> the page has no tag for) get a tag we write (negative keys)."""
    found: dict[int, list[int]] = {}
    mark_value = re.compile(r"[\t\n\f\r ]" + re.escape(mark) + r'="(\d+)"')
    markers = re.compile(re.escape(prop) + r"(\d+):")
    stack: list[tuple[str, list[int] | None, bool]] = []  # name, pending markers of an implied element
    sheet.implied: list[tuple[int, str, list[int]]] = []  # (before tag index, name, markers)
    position = 0
    while True:
        match = _OUTPUT_TAG.search(output, position)
        if not match:
            break
        position = match.end()
        if match.group(2) is None:
            continue
        closing, name, attributes = match.group(1), match.group(2).lower(), match.group(3)
        if closing:
            for depth in range(len(stack) - 1, -1, -1):
                if stack[depth][0] == name:
                    for pending_name, pending, _ in stack[depth:]:
                        if pending:
                            sheet.report.dropped.append(
                                f"rules for an implied <{pending_name}> with nothing in it")
                    del stack[depth:]
                    break
            continue
        in_head = any(entry[0] == "head" for entry in stack)
        number_match = mark_value.search(attributes)
        matched = ([int(m) for m in markers.findall(html_lib.unescape(attributes))]
                   if prop in attributes else [])
        pending_here = None
        if number_match:
            number = int(number_match.group(1))
            if matched and not in_head and number not in found:
                found[number] = matched
            # the first tag inside implied elements that matched: write their tags before it
            for depth, (pending_name, pending, _) in enumerate(stack):
                if pending:
                    sheet.implied.append((number, pending_name, pending))
                    stack[depth] = (pending_name, None, False)
        elif matched and not in_head and name != "head":
            if name in _IMPLIABLE:
                pending_here = matched
            else:
                sheet.report.dropped.append(f"rules for an implied <{name}>")
        if name in _VOID:
            continue
        if name in _RAW_OUTPUT:
            close = output.lower().find(f"</{name}", position)
            position = len(output) if close < 0 else close
        stack.append((name, pending_here, False))
    for pending_name, pending, _ in stack:
        if pending and pending_name in ("html", "body"):
            sheet.implied.append((len(page.tags), pending_name, pending))
    return found


_NO_STYLE = frozenset(("style", "script", "head", "title", "meta", "link", "base", "template", "html:head"))


def _write(page: Page, sheet: _Sheet, styles: list[tuple[int, StyleElement]],
           styled: dict[int, list[int]]) -> str:
    text = page.text
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement)
    for index, style in styles:
        kept = sheet.kept.get(index, "")
        if kept.strip():
            edits.append((style.content_start, style.content_end, "\n" + kept))
        else:
            edits.append((style.tag.start, style.end, ""))
    extra = sheet.kept.get(-1, "")
    if extra.strip():
        head = next((tag for tag in page.tags if tag.name == "head"), None)
        position = head.end if head is not None else 0
        edits.append((position, position, f"<style>\n{extra}</style>"))
    for number, matched in styled.items():
        tag = page.tags[number]
        if tag.name in _NO_STYLE:
            continue
        own = tag.value("style")
        chain = _cascade(sheet, matched, own or "")
        declarations = _serialise(chain)
        added = _attributes(tag, chain)
        new = "".join(f' {name}="{_escape(value)}"' for name, value in added)
        style = tag.attributes.get("style")
        if style is not None:
            quoted = text[style.value_start - 1] in "\"'" if style.value_start > style.start else False
            start = style.value_start - 1 if quoted else style.value_start
            end = style.value_end + 1 if quoted else style.value_end
            if style.value_start == style.value_end and not quoted:  # style with no value at all
                start, end = style.start, style.end
                edits.append((start, end, f'style="{_escape(declarations)}"'))
            else:
                edits.append((start, end, f'"{_escape(declarations)}"'))
            if new:
                edits.append((tag.name_end, tag.name_end, new))
        else:
            edits.append((tag.name_end, tag.name_end, f' style="{_escape(declarations)}"' + new))
    for before, name, matched in getattr(sheet, "implied", []):
        chain = _cascade(sheet, matched, "")
        position = page.tags[before].start if before < len(page.tags) else len(text)
        edits.append((position, position, f'<{name} style="{_escape(_serialise(chain))}">'))
    edits.sort(key=lambda edit: (edit[0], edit[1]))
    out, position = [], 0
    for start, end, replacement in edits:
        if start < position:
            continue  # overlaps an edit made already (a tag inside a removed <style>)
        out.append(text[position:start])
        out.append(replacement)
        position = end
    out.append(text[position:])
    return "".join(out)


@dataclass
class _Written:
    name: str
    value: str
    important: bool  # written with !important (only the element's own !important declarations)
    certain: bool


def _cascade(sheet: _Sheet, matched: list[int], own: str) -> list[_Written]:
    """The declarations that apply to an element, lowest precedence first, overridden ones left out."""
    rules = sorted(set(matched), key=lambda i: (sheet.inlined[i].specificity, sheet.inlined[i].order))
    own_declarations, dropped = parse_declarations(css_tokens(own), own)
    for reason in dropped:
        sheet.report.dropped.append(f"style attribute: {reason}")
    chain: list[_Written] = []
    for important in (False, True):
        for index in rules:
            chain.extend(_Written(d.name, d.value, False, d.certain)
                         for d in sheet.inlined[index].declarations if d.important == important)
        chain.extend(_Written(d.name, d.value, important, d.certain)
                     for d in own_declarations if d.important == important)
    kept: list[_Written] = []
    settled: set[str] = set()
    for declaration in reversed(chain):
        if declaration.name in settled:
            continue
        kept.append(declaration)
        if declaration.certain:
            settled.add(declaration.name)
    kept.reverse()
    return kept


def _serialise(chain: list[_Written]) -> str:
    return "; ".join(f"{d.name}: {d.value}{' !important' if d.important else ''}" for d in chain)


def _escape(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;")


_URL = re.compile(r"""url\(\s*(?:(["'])((?:(?!\1)[^\\])*)\1|([^"'()\\\s]*))\s*\)""", re.I)
_SIZE = re.compile(r"(\d+(?:\.\d+)?)(px|%)?", re.I)
_HEX = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})")
_RGB = re.compile(r"rgb\(\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*\)", re.I)
_CSS_COLORS = frozenset("""
    aliceblue antiquewhite aqua aquamarine azure beige bisque black blanchedalmond blue blueviolet brown
    burlywood cadetblue chartreuse chocolate coral cornflowerblue cornsilk crimson cyan darkblue darkcyan
    darkgoldenrod darkgray darkgreen darkgrey darkkhaki darkmagenta darkolivegreen darkorange darkorchid
    darkred darksalmon darkseagreen darkslateblue darkslategray darkslategrey darkturquoise darkviolet
    deeppink deepskyblue dimgray dimgrey dodgerblue firebrick floralwhite forestgreen fuchsia gainsboro
    ghostwhite gold goldenrod gray green greenyellow grey honeydew hotpink indianred indigo ivory khaki
    lavender lavenderblush lawngreen lemonchiffon lightblue lightcoral lightcyan lightgoldenrodyellow
    lightgray lightgreen lightgrey lightpink lightsalmon lightseagreen lightskyblue lightslategray
    lightslategrey lightsteelblue lightyellow lime limegreen linen magenta maroon mediumaquamarine
    mediumblue mediumorchid mediumpurple mediumseagreen mediumslateblue mediumspringgreen mediumturquoise
    mediumvioletred midnightblue mintcream mistyrose moccasin navajowhite navy oldlace olive olivedrab
    orange orangered orchid palegoldenrod palegreen paleturquoise palevioletred papayawhip peachpuff peru
    pink plum powderblue purple rebeccapurple red rosybrown royalblue saddlebrown salmon sandybrown
    seagreen seashell sienna silver skyblue slateblue slategray slategrey snow springgreen steelblue tan
    teal thistle tomato turquoise violet wheat white whitesmoke yellow yellowgreen
""".split())
_SIZED = frozenset(("table", "td", "th", "img"))
_CELLS = frozenset(("td", "th"))
_TABLE_PARTS = frozenset(("table", "tr", "td", "th"))


def _winner(chain: list[_Written], *names: str) -> _Written | None:
    """The declaration that wins among ``names`` (a shorthand and its longhand), if a browser keeps it."""
    for declaration in reversed(chain):
        if declaration.name in names:
            return declaration if declaration.certain else None
    return None


def _attributes(tag: StartTag, chain: list[_Written]) -> list[tuple[str, str]]:
    """HTML attributes Outlook and old clients read, where the tag lacks them and the value is plain."""
    added: list[tuple[str, str]] = []

    def add(name: str, value: str | None) -> None:
        if value is not None and name not in tag.attributes:
            added.append((name, value))

    if tag.name in _SIZED:
        for name in ("width", "height"):
            winner = _winner(chain, name)
            match = _SIZE.fullmatch(winner.value) if winner else None
            if match and (match.group(2) or match.group(1).strip("0.") == ""):
                if match.group(2) == "%":
                    add(name, None if tag.name == "img" else match.group(1) + "%")
                else:
                    add(name, match.group(1))
    if tag.name in _TABLE_PARTS:
        winner = _winner(chain, "background-color", "background")
        if winner is not None:
            add("bgcolor", _legacy_color(winner.value))
        winner = _winner(chain, "background-image", "background")
        image = _URL.fullmatch(winner.value) if winner is not None else None
        if image:
            add("background", (image.group(2) if image.group(2) is not None else image.group(3)).strip())
    if tag.name in _CELLS:
        winner = _winner(chain, "text-align")
        if winner is not None and winner.value.lower() in ("left", "right", "center", "justify"):
            add("align", winner.value.lower())
    if tag.name in (*_CELLS, "tr"):
        winner = _winner(chain, "vertical-align")
        if winner is not None and winner.value.lower() in ("top", "middle", "bottom", "baseline"):
            add("valign", winner.value.lower())
    return added


def _legacy_color(value: str) -> str | None:
    """A CSS colour as a bgcolor attribute reads it the same (hex, a named colour, rgb()), else None."""
    value = value.strip()
    if _HEX.fullmatch(value):
        return value
    if value.lower() in _CSS_COLORS:
        return value.lower()
    match = _RGB.fullmatch(value)
    if match and all(int(c) <= 255 for c in match.groups()):
        return "#" + "".join(f"{int(c):02x}" for c in match.groups())
    return None


# ----------------------------------------------------------------------------------------------------------
# The outbound step: every text/html part of a message, decoded by its charset and encoded as it was

_HTML_TYPE = re.compile(rb"text/html", re.I)


def has_html(content: bytes) -> bool:
    """Cheap: whether a message may hold an HTML part (the step looks properly)."""
    return _HTML_TYPE.search(content) is not None


def inline_message(content: bytes) -> bytes:
    """The message with CSS inlined in its HTML parts; ``content`` itself when nothing changed.

    Attachments and parts inside attached messages are left alone; every other
    byte of the message stays as it was. A part declared us-ascii (or without a
    charset) that holds UTF-8 is read and written as UTF-8. Raises InlineError
    when an HTML part cannot be decoded or inlined (the caller then sends the
    message unchanged).
    """
    root = tree.parse(content)
    changed = False
    for part in root.walk():
        if part.is_multipart or part.content_type != "text/html":
            continue
        disposition = part.header("content-disposition")
        if disposition is not None and disposition.value.strip().lower().startswith("attachment"):
            continue
        charset = part.params.get("charset", "us-ascii").strip().lower() or "us-ascii"
        raw = part.decoded()
        try:
            codec = _codec(charset)
            if codec == "ascii" and not raw.isascii():
                codec = "utf-8"  # us-ascii mail often holds UTF-8; anything else still fails below
            text = raw.decode(codec)
        except (LookupError, UnicodeDecodeError) as exc:
            raise InlineError(f"cannot decode the HTML part as {charset}: {exc}") from None
        result = inline_html(text)
        if not result.changed or result.html == text:
            continue
        data = result.html.encode(codec, "xmlcharrefreplace")
        encoding = part.transfer_encoding
        if encoding == "base64":
            ended = part.body.endswith(b"\n")
            part.body = tree.encode_base64(data)
            if not ended:
                part.body = part.body.rstrip(b"\r\n")
        elif encoding == "quoted-printable":
            part.body = tree.encode_quoted_printable(data)
        else:
            part.body = data  # 7bit or 8bit as before; long lines are the next step's
        changed = True
    return tree.serialize(root) if changed else content


def _codec(charset: str) -> str:
    """A charset name as Python knows it ("ascii" for us-ascii); LookupError when it is not a text one."""
    name = codecs.lookup(charset).name
    if not codecs.lookup(name)._is_text_encoding:
        raise LookupError(f"{charset} is not a text encoding")
    return name


def step(message: Any, content: bytes, settings: Any) -> bytes:
    """MESSAGE_STEPS run: inline CSS in the message's HTML parts."""
    return inline_message(content)


def step_needed(message: Any, content: bytes) -> bool:
    return bool(message.options.inlinecss) and has_html(content)
