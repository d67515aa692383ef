"""Personalization: SMTPeter's Smarty-like template language on message text.

``{$name}``, ``{$order.lines[0].price}``, modifiers (``{$name|ucfirst|default:'friend'}``),
``{if}``/``{elseif}``/``{else}``, ``{foreach}``, ``{assign}``, arithmetic,
``{ldelim}``/``{rdelim}``/``{literal}``, and ``hash($text, 'sha256')``
(smtpeter-api.md §4.11). Only a brace that opens one of these constructs is a
tag; any other ``{`` is text, so CSS and JSON in a message pass through.

A template is parsed once into a tree and rendered once per recipient. The
renderings of one request share a Budget: characters of work (every string a
modifier reads or makes, every character written), loop rounds and time; a
result that would break it is refused before it is made. Nesting of blocks and
expressions is bounded too. Every mistake, in the template or in the data, is
a TemplateError that names it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import math
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_VALUE = 32 * 1024 * 1024  # characters in any one value
MAX_WORK = 256 * 1024 * 1024  # characters of work for one request (a Budget's default)
MAX_SECONDS = 20.0
MAX_ITERATIONS = 100_000  # foreach rounds for one request
MAX_DEPTH = 32  # nested blocks and parentheses
MAX_NODES = 200  # operations in one tag (each one a level of evaluation)
MAX_INT = 10**30  # integers past this are an error, not a slow surprise
_INT = re.compile(r"\s*[+-]?\d{1,40}\s*")
_FLOAT = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
_VARIABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_TAG_START = re.compile(
    r"\{(?=\$|if\s|elseif\s|else\s+if\s|else\}|/if\}|foreach\s|foreachelse\}|/foreach\}|assign\s"
    r"|ldelim\}|rdelim\}|literal\}|hash\()"
)
_ELSE_IF = re.compile(r"else\s+if\s")
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<var>\$[A-Za-z_][A-Za-z0-9_-]*)
    | (?P<number>\d{1,30}(?:\.\d{1,30})?)
    | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<op>==|!=|>=|<=|=>|&&|\|\||[<>+\-*/%()\[\].|:,!])
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
_WORD_OPERATORS = {"eq": "==", "ne": "!=", "neq": "!=", "gt": ">", "ge": ">=", "gte": ">=", "lt": "<",
                   "le": "<=", "lte": "<=", "and": "&&", "or": "||", "not": "!", "mod": "%"}
_COMPARISONS = {"==", "!=", ">", ">=", "<", "<="}


class TemplateError(ValueError):
    """The template cannot be parsed or rendered; the message says where and why."""


class Budget:
    """What the renderings of one request may cost together."""

    def __init__(self, characters: int = MAX_WORK, seconds: float = MAX_SECONDS,
                 rounds: int = MAX_ITERATIONS) -> None:
        self.characters = characters
        self.rounds = rounds
        self.deadline = time.monotonic() + seconds

    def charge(self, characters: int) -> None:
        self.characters -= characters
        if self.characters < 0:
            raise TemplateError("personalization would take more work than one request may")
        if time.monotonic() > self.deadline:
            raise TemplateError("personalization takes too long")

    def round(self) -> None:
        self.rounds -= 1
        if self.rounds < 0:
            raise TemplateError("personalization loops more than one request may")
        self.charge(1)


def is_variable_name(name: str) -> bool:
    """SMTPeter's rule: letters, digits, ``-`` and ``_``, starting with a letter."""
    return _VARIABLE_NAME.fullmatch(name) is not None


def has_tags(text: str) -> bool:
    return _TAG_START.search(text) is not None


# -- the tree -------------------------------------------------------------------------


@dataclass
class _Expression:
    kind: str  # "literal", "var", "index", "unary", "binary", "modifier", "call"
    value: Any = None
    parts: list[_Expression] = field(default_factory=list)


@dataclass
class _Output:
    expression: _Expression


@dataclass
class _If:
    branches: list[tuple[_Expression, list[Any]]]
    otherwise: list[Any]


@dataclass
class _Foreach:
    source: _Expression
    key: str | None
    value: str
    body: list[Any]
    otherwise: list[Any]


@dataclass
class _Assign:
    expression: _Expression
    name: str


# -- parsing ----------------------------------------------------------------------------


def _tag_end(text: str, start: int) -> int:
    """Index of the ``}`` closing the tag that opens at ``start``; quotes may hold braces."""
    quote = None
    i = start + 1
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "}":
            return i
        i += 1
    raise TemplateError(f"unclosed tag {text[start:start + 30]!r}")


class Template:
    """A parsed template; ``render`` fills it in for one set of variables."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._position = 0
        self.nodes, closing = self._block(())
        if closing is not None:
            raise TemplateError(f"line {self._line(closing[1])}: {{{closing[0]}}} without its opening tag")

    def _line(self, position: int) -> int:
        """Counted only for an error message: counting for every tag would be quadratic."""
        return self.text.count("\n", 0, position) + 1

    def _block(self, ends: tuple[str, ...], depth: int = 0) -> tuple[list[Any], tuple[str, int] | None]:
        """Nodes up to one of the closing tags in ``ends``; returns them and the (tag, position)
        that ended them."""
        if depth > MAX_DEPTH:
            raise TemplateError(f"blocks nested more than {MAX_DEPTH} deep")
        text, nodes = self.text, []
        while True:
            match = _TAG_START.search(text, self._position)
            if match is None:
                if self._position < len(text):
                    nodes.append(text[self._position:])
                self._position = len(text)
                if ends:
                    raise TemplateError(f"missing {{{ends[-1]}}} at the end of the template")
                return nodes, None
            start = match.start()
            if start > self._position:
                nodes.append(text[self._position:start])
            end = _tag_end(text, start)
            content = text[start + 1:end].strip()
            if _ELSE_IF.match(content):  # Smarty 3 spells it both ways
                content = "elseif " + content[4:].lstrip()[2:]
            self._position = end + 1
            word = content.split(None, 1)[0] if content else ""
            if word in ("elseif", "else", "/if", "foreachelse", "/foreach"):
                if word not in ends:
                    raise TemplateError(f"line {self._line(start)}: {{{word}}} where it does not belong")
                return nodes, (content, start)
            nodes.append(self._tag(content, start, depth))

    def _tag(self, content: str, start: int, depth: int) -> Any:
        if content == "ldelim":
            return "{"
        if content == "rdelim":
            return "}"
        if content == "literal":
            close = self.text.find("{/literal}", self._position)
            if close < 0:
                raise TemplateError(f"line {self._line(start)}: {{literal}} without {{/literal}}")
            literal, self._position = self.text[self._position:close], close + len("{/literal}")
            return literal
        try:
            if content.startswith("if "):
                return self._if(content[3:], start, depth)
            if content.startswith("foreach "):
                return self._foreach(content[8:], start, depth)
            if content.startswith("assign "):
                parser = _ExpressionParser(content[7:])
                expression = parser.expression()
                parser.expect_word("to")
                name = parser.variable_name()
                parser.done()
                return _Assign(expression, name)
            parser = _ExpressionParser(content)
            expression = parser.expression()
            parser.done()
            return _Output(expression)
        except TemplateError as exc:
            if str(exc).startswith("line "):
                raise
            raise TemplateError(f"line {self._line(start)}: {{{content[:60]}}}: {exc}") from None

    def _if(self, condition: str, start: int, depth: int) -> _If:
        branches, otherwise = [], []
        expression = _ExpressionParser.whole(condition)
        while True:
            body, (closing, _) = self._block(("elseif", "else", "/if"), depth + 1)
            branches.append((expression, body))
            if closing.startswith("elseif"):
                expression = _ExpressionParser.whole(closing[6:])
                continue
            if closing == "else":
                otherwise, (closing, _) = self._block(("/if",), depth + 1)
            if closing != "/if":
                raise TemplateError(f"line {self._line(start)}: {{if}} closed by {{{closing}}}")
            return _If(branches, otherwise)

    def _foreach(self, spec: str, start: int, depth: int) -> _Foreach:
        parser = _ExpressionParser(spec)
        key: str | None = None
        if parser.peek() and parser.peek()[0] == "var" and parser.peek(1) == ("word", "in"):
            value = parser.variable_name()
            parser.expect_word("in")
            source = parser.expression()
        else:
            source = parser.expression()
            parser.expect_word("as")
            value = parser.variable_name()
            if parser.peek() == ("op", "=>"):
                parser.take()
                key, value = value, parser.variable_name()
        parser.done()
        body, (closing, _) = self._block(("foreachelse", "/foreach"), depth + 1)
        otherwise: list[Any] = []
        if closing == "foreachelse":
            otherwise, (closing, _) = self._block(("/foreach",), depth + 1)
        if closing != "/foreach":
            raise TemplateError(f"line {self._line(start)}: {{foreach}} closed by {{{closing}}}")
        return _Foreach(source, key, value, body, otherwise)

    def render(self, variables: Mapping[str, Any], output: Callable[[str], str] = str,
               budget: Budget | None = None) -> str:
        """The text for ``variables``; ``output`` checks or converts each value written out."""
        renderer = _Renderer(dict(variables), output, budget or Budget())
        try:
            return renderer.run(self.nodes)
        except (ArithmeticError, ValueError, RecursionError, MemoryError) as exc:
            if isinstance(exc, TemplateError):
                raise
            raise TemplateError(f"the template cannot be filled in: {type(exc).__name__}") from None


class _ExpressionParser:
    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        position = 0
        text = text.rstrip()
        while position < len(text):
            match = _TOKEN.match(text, position)
            if not match or match.end() == position:
                raise TemplateError(f"cannot read {text[position:position + 20].strip()!r}")
            kind = match.lastgroup or ""
            token = match.group(kind)
            if kind == "word" and token.lower() in _WORD_OPERATORS:
                kind, token = "op", _WORD_OPERATORS[token.lower()]
            self.tokens.append((kind, token))
            position = match.end()
        self.index = 0
        self.depth = 0
        self.nodes = 0

    def node(self, kind: str, value: Any = None, parts: list[_Expression] | None = None) -> _Expression:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise TemplateError(f"more than {MAX_NODES} operations in one tag")
        return _Expression(kind, value, parts or [])

    @classmethod
    def whole(cls, text: str) -> _Expression:
        parser = cls(text)
        expression = parser.expression()
        parser.done()
        return expression

    def peek(self, ahead: int = 0) -> tuple[str, str] | None:
        index = self.index + ahead
        return self.tokens[index] if index < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise TemplateError("the expression ends too soon")
        self.index += 1
        return token

    def accept(self, *ops: str) -> str | None:
        token = self.peek()
        if token and token[0] == "op" and token[1] in ops:
            self.index += 1
            return token[1]
        return None

    def expect(self, op: str) -> None:
        if not self.accept(op):
            raise TemplateError(f"expected {op!r}")

    def expect_word(self, word: str) -> None:
        if self.take() != ("word", word):
            raise TemplateError(f"expected '{word}'")

    def variable_name(self) -> str:
        kind, token = self.take()
        if kind != "var":
            raise TemplateError(f"expected a $variable, not {token!r}")
        return token[1:]

    def done(self) -> None:
        if self.peek() is not None:
            raise TemplateError(f"unexpected {self.peek()[1]!r}")

    def expression(self) -> _Expression:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise TemplateError("expression nested too deeply")
        left = self._and()
        while self.accept("||"):
            left = self.node("binary", "||", [left, self._and()])
        self.depth -= 1
        return left

    def _and(self) -> _Expression:
        left = self._not()
        while self.accept("&&"):
            left = self.node("binary", "&&", [left, self._not()])
        return left

    def _not(self) -> _Expression:
        negations = 0
        while self.accept("!"):
            negations += 1
        value = self._comparison()
        return self.node("unary", "!", [self.node("unary", "!", [value])] if negations % 2 == 0
                           else [value]) if negations else value

    def _comparison(self) -> _Expression:
        left = self._sum()
        token = self.peek()
        if token and token[0] == "op" and token[1] in _COMPARISONS:
            self.index += 1
            return self.node("binary", token[1], [left, self._sum()])
        return left

    def _sum(self) -> _Expression:
        left = self._product()
        while (op := self.accept("+", "-")) is not None:
            left = self.node("binary", op, [left, self._product()])
        return left

    def _product(self) -> _Expression:
        left = self._unary()
        while (op := self.accept("*", "/", "%")) is not None:
            left = self.node("binary", op, [left, self._unary()])
        return left

    def _unary(self) -> _Expression:
        negations = 0
        while self.accept("-"):
            negations += 1
        value = self._filtered()
        return self.node("unary", "-", [value]) if negations % 2 else value

    def _filtered(self) -> _Expression:
        value = self._primary()
        while self.accept("|"):
            kind, name = self.take()
            if kind != "word" or name not in _MODIFIERS:
                raise TemplateError(f"unknown modifier {name!r}")
            arguments = []
            while self.accept(":"):
                arguments.append(self._unary_argument())
            value = self.node("modifier", name, [value, *arguments])
        return value

    def _unary_argument(self) -> _Expression:
        if self.accept("-"):
            return self.node("unary", "-", [self._primary()])
        return self._primary()

    def _primary(self) -> _Expression:
        kind, token = self.take()
        if kind == "number":
            return _Expression("literal", float(token) if "." in token else int(token))
        if kind == "string":
            return _Expression("literal", _unquote(token))
        if kind == "word" and token in ("true", "false", "null"):
            return _Expression("literal", {"true": True, "false": False, "null": None}[token])
        if kind == "word" and token in _FUNCTIONS and self.accept("("):
            arguments = [] if self.accept(")") else self._arguments()
            return self.node("call", token, arguments)
        if (kind, token) == ("op", "("):
            inner = self.expression()
            self.expect(")")
            return inner
        if kind == "var":
            node = self.node("var", token[1:])
            while True:
                if self.accept("."):
                    key_kind, key = self.take()
                    if key_kind not in ("word", "number"):
                        raise TemplateError(f"'.' must be followed by a name, not {key!r}")
                    node = self.node("index", None, [node, _Expression("literal", key)])
                elif self.accept("["):
                    node = self.node("index", None, [node, self.expression()])
                    self.expect("]")
                else:
                    return node
        raise TemplateError(f"unexpected {token!r}")

    def _arguments(self) -> list[_Expression]:
        arguments = [self.expression()]
        while self.accept(","):
            arguments.append(self.expression())
        self.expect(")")
        return arguments


def _unquote(token: str) -> str:
    body = token[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


# -- values -------------------------------------------------------------------------------


def text_of(value: Any) -> str:
    """How a value is written out: PHP's rules, as Smarty templates expect them."""
    if value is None or value is False:
        return ""
    if value is True:
        return "1"
    if isinstance(value, float):
        return format(value, ".14G") if math.isfinite(value) else ""  # PHP's precision
    if isinstance(value, dict | list):
        return ""
    return str(value)


def _number(value: Any) -> int | float:
    """Arithmetic operands: numbers and numeric text count, anything else is 0."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else 0
    if isinstance(value, str) and len(value) < 400:
        if _INT.fullmatch(value):
            return int(value)
        if _FLOAT.fullmatch(value):
            number = float(value)
            return number if math.isfinite(number) else 0
    return 0


def _int(value: Any, low: int = -(10**9), high: int = 10**9) -> int:
    """A count or position argument, clamped to what any string could need."""
    number = _number(value)
    return max(low, min(high, int(number)))


def _numeric(value: Any) -> bool:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return not isinstance(value, float) or math.isfinite(value)
    return isinstance(value, str) and len(value) < 400 and _FLOAT.fullmatch(value) is not None \
        and math.isfinite(float(value))


def truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value not in ("", "0")
    return bool(value)


def _compare(op: str, left: Any, right: Any) -> bool:
    if _numeric(left) and _numeric(right):
        a, b = _number(left), _number(right)
    elif left is None or right is None or isinstance(left, bool) or isinstance(right, bool):
        a, b = truthy(left), truthy(right)
        if op not in ("==", "!="):
            a, b = int(a), int(b)
    else:
        a, b = text_of(left), text_of(right)
    return {"==": a == b, "!=": a != b, ">": a > b, ">=": a >= b, "<": a < b, "<=": a <= b}[op]


def _arithmetic(op: str, left: Any, right: Any) -> int | float:
    a, b = _number(left), _number(right)
    if abs(a) > MAX_INT or abs(b) > MAX_INT:
        raise TemplateError("number too large")
    if op == "+":
        result = a + b
    elif op == "-":
        result = a - b
    elif op == "*":
        result = a * b
    elif b == 0:
        return 0  # division by zero is nothing, not an error
    elif op == "/":
        result = a / b
        result = int(result) if result.is_integer() and abs(result) < MAX_INT else result
    else:
        result = a % b
    if abs(result) > MAX_INT or (isinstance(result, float) and not math.isfinite(result)):
        raise TemplateError("number too large")
    return result


def _truncate(value: Any, length: Any = 80, etc: Any = "...", break_words: Any = False) -> str:
    text, length, etc = text_of(value), _int(length, 0), text_of(etc)
    if length == 0:
        return ""
    if len(text) <= length:
        return text
    keep = max(0, length - len(etc))
    cut = text[: keep + 1]
    if not truthy(break_words):
        # Smarty: drop the last, broken word and the white space before it (if there is any).
        end = len(cut)
        while end and not cut[end - 1].isspace():
            end -= 1
        if end:
            while end and cut[end - 1].isspace():
                end -= 1
            cut = cut[:end]
    return cut[:keep] + etc


def _escape(value: Any, kind: Any = "html") -> str:
    text = text_of(value)
    kind = text_of(kind)
    if kind in ("html", "htmlall"):
        return html.escape(text)
    if kind == "url":
        return urllib.parse.quote(text, safe="")
    if kind == "quotes":
        return text.replace("\\", "\\\\").replace("'", "\\'")
    if kind == "javascript":
        return (text.replace("\\", "\\\\").replace("'", "\\'").replace('"', '\\"')
                .replace("\r", "\\r").replace("\n", "\\n").replace("</", "<\\/"))
    raise TemplateError(f"escape: unknown kind {kind!r}")


def _substr(value: Any, start: Any = 0, length: Any = None) -> str:
    text = text_of(value)
    begin = _int(start)
    if length is None:
        return text[begin:]
    count = _int(length)
    begin = begin if begin >= 0 else max(0, len(text) + begin)
    return text[begin:begin + count] if count >= 0 else text[begin:count]


def _range(value: Any, end: Any = None, step: Any = 1) -> list[int]:
    start, stop = (0, _int(value) - 1) if end is None else (_int(value), _int(end))
    step = abs(_int(step)) or 1
    if abs(stop - start) // step > MAX_ITERATIONS:
        raise TemplateError("range: too many numbers")
    return list(range(start, stop + 1, step)) if stop >= start else list(range(start, stop - 1, -step))


def _base64_decode(value: Any) -> str:
    try:
        return base64.b64decode(text_of(value), validate=False).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return ""


def _count_characters(value: Any, include_spaces: Any = False) -> int:
    text = text_of(value)
    return len(text) if truthy(include_spaces) else sum(1 for c in text if not c.isspace())


def _strstr(value: Any, needle: Any) -> str | bool:
    text, needle = text_of(value), text_of(needle)
    index = text.find(needle)
    return text[index:] if index >= 0 else False


def _indent(value: Any, count: Any = 4, character: Any = " ") -> str:
    prefix = text_of(character) * _int(count, 0, 1000)
    return "\n".join(prefix + line for line in text_of(value).split("\n"))


def _default(value: Any, fallback: Any = "") -> Any:
    return fallback if value is None or value == "" else value  # Smarty: unset or '' only


def _replace(value: Any, search: Any, replacement: Any = "") -> str:
    text, search = text_of(value), text_of(search)
    return text.replace(search, text_of(replacement)) if search else text


# What a modifier can make out of its arguments, before it makes it: the ones
# whose output is not within a small multiple of their input.
_GROWTH: dict[str, Callable[..., int]] = {
    "spacify": lambda v, spacer=" ": len(text_of(v)) * (1 + len(text_of(spacer))),
    "indent": lambda v, count=4, character=" ":
        len(text_of(v)) + (text_of(v).count("\n") + 1) * _int(count, 0, 1000) * len(text_of(character)),
    "replace": lambda v, search="", replacement="": len(text_of(v)) + (
        text_of(v).count(text_of(search)) * len(text_of(replacement)) if text_of(search) else 0),
    "cat": lambda v, *more: len(text_of(v)) + sum(len(text_of(m)) for m in more),
}


_MODIFIERS: dict[str, Callable[..., Any]] = {
    "base64_encode": lambda v: base64.b64encode(text_of(v).encode()).decode(),
    "base64_decode": _base64_decode,
    "cat": lambda v, *more: text_of(v) + "".join(text_of(m) for m in more),
    "count": lambda v: len(v) if isinstance(v, dict | list) else (0 if v in (None, "") else 1),
    "count_characters": _count_characters,
    "count_paragraphs": lambda v: len([p for p in re.split(r"[\r\n]+", text_of(v)) if p.strip()]),
    "count_words": lambda v: len(text_of(v).split()),
    "default": _default,
    "empty": lambda v: not truthy(v) or v == [] or v == {},
    "escape": _escape,
    "indent": _indent,
    "md5": lambda v: hashlib.md5(text_of(v).encode(), usedforsecurity=False).hexdigest(),
    "nl2br": lambda v: re.sub(r"(\r\n|\r|\n)", r"<br />\1", text_of(v)),
    "range": _range,
    "replace": _replace,
    "sha1": lambda v: hashlib.sha1(text_of(v).encode(), usedforsecurity=False).hexdigest(),
    "spacify": lambda v, spacer=" ": text_of(spacer).join(text_of(v)),
    "strlen": lambda v: len(text_of(v)),
    "strstr": _strstr,
    "substr": _substr,
    "tolower": lambda v: text_of(v).lower(),
    "toupper": lambda v: text_of(v).upper(),
    "trim": lambda v: text_of(v).strip(),
    "truncate": _truncate,
    "ucfirst": lambda v: text_of(v)[:1].upper() + text_of(v)[1:],
    "urlencode": lambda v: urllib.parse.quote_plus(text_of(v)),
    "urldecode": lambda v: urllib.parse.unquote_plus(text_of(v)),
}
_HASHES = {"md5", "sha1", "sha224", "sha256", "sha384", "sha512"}


def _hash(value: Any, algorithm: Any = "sha256") -> str:
    name = text_of(algorithm).lower()
    if name not in _HASHES:
        raise TemplateError(f"hash: unknown algorithm {name!r}")
    return hashlib.new(name, text_of(value).encode(), usedforsecurity=False).hexdigest()


_FUNCTIONS: dict[str, Callable[..., Any]] = {"hash": _hash}


# -- rendering ----------------------------------------------------------------------------


class _Renderer:
    def __init__(self, variables: dict[str, Any], output: Callable[[str], str], budget: Budget) -> None:
        self.variables = variables
        self.output = output
        self.budget = budget
        self.parts: list[str] = []

    def run(self, nodes: list[Any]) -> str:
        self._nodes(nodes)
        return "".join(self.parts)

    def _write(self, text: str) -> None:
        self.budget.charge(len(text))
        self.parts.append(text)

    def _nodes(self, nodes: list[Any]) -> None:
        for node in nodes:
            if isinstance(node, str):
                self._write(node)
            elif isinstance(node, _Output):
                self._write(self.output(text_of(self._value(node.expression))))
            elif isinstance(node, _If):
                for condition, body in node.branches:
                    if truthy(self._value(condition)):
                        self._nodes(body)
                        break
                else:
                    self._nodes(node.otherwise)
            elif isinstance(node, _Foreach):
                self._foreach(node)
            elif isinstance(node, _Assign):
                self.variables[node.name] = self._value(node.expression)

    def _foreach(self, node: _Foreach) -> None:
        source = self._value(node.source)
        items = list(source.items()) if isinstance(source, dict) else \
            list(enumerate(source)) if isinstance(source, list) else []
        if not items:
            self._nodes(node.otherwise)
            return
        saved = {name: self.variables.get(name) for name in (node.key, node.value) if name}
        try:
            for key, value in items:
                self.budget.round()
                if node.key:
                    self.variables[node.key] = key
                self.variables[node.value] = value
                self._nodes(node.body)
        finally:
            self.variables.update(saved)

    def _value(self, expression: _Expression) -> Any:
        kind = expression.kind
        if kind == "literal":
            return expression.value
        if kind == "var":
            return self.variables.get(expression.value)
        if kind == "index":
            container, key = self._value(expression.parts[0]), self._value(expression.parts[1])
            if isinstance(container, dict):
                return container.get(text_of(key))
            if isinstance(container, list) and _numeric(key):
                index = _int(key)
                return container[index] if 0 <= index < len(container) else None
            return None
        if kind == "unary":
            operand = self._value(expression.parts[0])
            return not truthy(operand) if expression.value == "!" else -_number(operand)
        if kind == "binary":
            op = expression.value
            left = self._value(expression.parts[0])
            if op == "&&":
                return truthy(left) and truthy(self._value(expression.parts[1]))
            if op == "||":
                return truthy(left) or truthy(self._value(expression.parts[1]))
            right = self._value(expression.parts[1])
            if op in _COMPARISONS:
                return _compare(op, left, right)
            return _arithmetic(op, left, right)
        return self._call(expression.value, kind, [self._value(part) for part in expression.parts])

    def _call(self, name: str, kind: str, arguments: list[Any]) -> Any:
        """A modifier or function, paid for: what it reads, and what it makes before it makes it."""
        function = _MODIFIERS[name] if kind == "modifier" else _FUNCTIONS[name]
        self.budget.charge(sum(len(a) for a in arguments if isinstance(a, str)) + 1)
        try:
            if name in _GROWTH:
                size = _GROWTH[name](*arguments)
                if size > MAX_VALUE:
                    raise TemplateError(f"{name}: the result would be larger than {MAX_VALUE} characters")
                self.budget.charge(size)
            result = function(*arguments)
        except TypeError:
            raise TemplateError(f"{name}: wrong number of arguments") from None
        if isinstance(result, str):
            self.budget.charge(len(result))
        return result
