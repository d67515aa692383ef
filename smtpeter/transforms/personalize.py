"""Personalization: SMTPeter's Smarty-like template language on message text.

``{$name}``, ``{$order.lines[0].price}``, modifiers (``{$name|ucfirst|default:'friend'}``),
``{if}``/``{elseif}``/``{else}``, ``{foreach}``, ``{assign}``, arithmetic,
``{ldelim}``/``{rdelim}``/``{literal}``, and ``hash($text, 'sha256')``
(smtpeter-api.md §4.11). Only a brace that opens one of these constructs is a
tag; any other ``{`` is text, so CSS and JSON in a message pass through.

A template is parsed once into a tree and rendered once per recipient. What a
template may cost is bounded (output size, loop iterations, nesting), and every
mistake is a TemplateError that names it, never an exception from deep inside.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_OUTPUT = 32 * 1024 * 1024  # characters one rendering may produce
MAX_ITERATIONS = 100_000  # foreach rounds in one rendering
MAX_DEPTH = 32  # nested blocks and parentheses
_VARIABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_TAG_START = re.compile(
    r"\{(?=\$|if\s|elseif\s|else\}|/if\}|foreach\s|foreachelse\}|/foreach\}|assign\s|ldelim\}|rdelim\}"
    r"|literal\}|hash\()"
)
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<var>\$[A-Za-z_][A-Za-z0-9_-]*)
    | (?P<number>\d+(?:\.\d+)?)
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


def _line_of(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


class Template:
    """A parsed template; ``render`` fills it in for one set of variables."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._position = 0
        self.nodes, closing = self._block(())
        if closing is not None:
            raise TemplateError(f"line {closing[1]}: {{{closing[0]}}} without its opening tag")

    def _block(self, ends: tuple[str, ...], depth: int = 0) -> tuple[list[Any], tuple[str, int] | None]:
        """Nodes up to one of the closing tags in ``ends``; returns them and (tag, line) that ended them."""
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
            line = _line_of(text, start)
            self._position = end + 1
            word = content.split(None, 1)[0] if content else ""
            if word in ("elseif", "else", "/if", "foreachelse", "/foreach"):
                if word not in ends:
                    raise TemplateError(f"line {line}: {{{word}}} where it does not belong")
                return nodes, (content, line)
            nodes.append(self._tag(content, line, depth))

    def _tag(self, content: str, line: int, depth: int) -> Any:
        if content == "ldelim":
            return "{"
        if content == "rdelim":
            return "}"
        if content == "literal":
            close = self.text.find("{/literal}", self._position)
            if close < 0:
                raise TemplateError(f"line {line}: {{literal}} without {{/literal}}")
            literal, self._position = self.text[self._position:close], close + len("{/literal}")
            return literal
        try:
            if content.startswith("if "):
                return self._if(content[3:], line, depth)
            if content.startswith("foreach "):
                return self._foreach(content[8:], line, depth)
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
            raise TemplateError(f"line {line}: {{{content[:60]}}}: {exc}") from None

    def _if(self, condition: str, line: int, depth: int) -> _If:
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
                raise TemplateError(f"line {line}: {{if}} closed by {{{closing}}}")
            return _If(branches, otherwise)

    def _foreach(self, spec: str, line: int, depth: int) -> _Foreach:
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
            raise TemplateError(f"line {line}: {{foreach}} closed by {{{closing}}}")
        return _Foreach(source, key, value, body, otherwise)

    def render(self, variables: Mapping[str, Any], output: Callable[[str], str] = str) -> str:
        """The text for ``variables``; ``output`` checks or converts each value written out."""
        return _Renderer(dict(variables), output).run(self.nodes)


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
            left = _Expression("binary", "||", [left, self._and()])
        self.depth -= 1
        return left

    def _and(self) -> _Expression:
        left = self._not()
        while self.accept("&&"):
            left = _Expression("binary", "&&", [left, self._not()])
        return left

    def _not(self) -> _Expression:
        negations = 0
        while self.accept("!"):
            negations += 1
        value = self._comparison()
        return _Expression("unary", "!", [_Expression("unary", "!", [value])] if negations % 2 == 0
                           else [value]) if negations else value

    def _comparison(self) -> _Expression:
        left = self._sum()
        token = self.peek()
        if token and token[0] == "op" and token[1] in _COMPARISONS:
            self.index += 1
            return _Expression("binary", token[1], [left, self._sum()])
        return left

    def _sum(self) -> _Expression:
        left = self._product()
        while (op := self.accept("+", "-")) is not None:
            left = _Expression("binary", op, [left, self._product()])
        return left

    def _product(self) -> _Expression:
        left = self._unary()
        while (op := self.accept("*", "/", "%")) is not None:
            left = _Expression("binary", op, [left, self._unary()])
        return left

    def _unary(self) -> _Expression:
        negations = 0
        while self.accept("-"):
            negations += 1
        value = self._filtered()
        return _Expression("unary", "-", [value]) if negations % 2 else value

    def _filtered(self) -> _Expression:
        value = self._primary()
        while self.accept("|"):
            kind, name = self.take()
            if kind != "word" or name not in _MODIFIERS:
                raise TemplateError(f"unknown modifier {name!r}")
            arguments = []
            while self.accept(":"):
                arguments.append(self._unary_argument())
            value = _Expression("modifier", name, [value, *arguments])
        return value

    def _unary_argument(self) -> _Expression:
        if self.accept("-"):
            return _Expression("unary", "-", [self._primary()])
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
            return _Expression("call", token, arguments)
        if (kind, token) == ("op", "("):
            inner = self.expression()
            self.expect(")")
            return inner
        if kind == "var":
            node = _Expression("var", token[1:])
            while True:
                if self.accept("."):
                    key_kind, key = self.take()
                    if key_kind not in ("word", "number"):
                        raise TemplateError(f"'.' must be followed by a name, not {key!r}")
                    node = _Expression("index", None, [node, _Expression("literal", key)])
                elif self.accept("["):
                    node = _Expression("index", None, [node, self.expression()])
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
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, dict | list):
        return ""
    return str(value)


def _number(value: Any) -> int | float:
    """Arithmetic operands: numbers and numeric text count, anything else is 0."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                number = float(value.strip())
            except ValueError:
                return 0
            return number if number == number and abs(number) != float("inf") else 0
    return 0


def _numeric(value: Any) -> bool:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return True
    if isinstance(value, str):
        try:
            float(value.strip())
        except ValueError:
            return False
        return bool(value.strip())
    return False


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
        result = int(result) if isinstance(result, float) and result.is_integer() else result
    else:
        result = a % b
    if isinstance(result, int) and abs(result) > 10**30:
        raise TemplateError("number too large")
    return result


def _truncate(value: Any, length: Any = 80, etc: Any = "...", break_words: Any = False) -> str:
    text, length, etc = text_of(value), int(_number(length)), text_of(etc)
    if len(text) <= length:
        return text
    keep = max(0, length - len(etc))
    cut = text[: keep + 1]
    if not truthy(break_words):
        cut = re.sub(r"\s+?(\S+)?$", "", cut)  # Smarty: end at a word boundary
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
    begin = int(_number(start))
    if length is None:
        return text[begin:]
    count = int(_number(length))
    begin = begin if begin >= 0 else max(0, len(text) + begin)
    return text[begin:begin + count] if count >= 0 else text[begin:count]


def _range(value: Any, end: Any = None, step: Any = 1) -> list[int]:
    start, stop = (0, int(_number(value)) - 1) if end is None else (int(_number(value)), int(_number(end)))
    step = abs(int(_number(step))) or 1
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
    prefix = text_of(character) * min(int(_number(count)), 1000)
    return "\n".join(prefix + line for line in text_of(value).split("\n"))


def _default(value: Any, fallback: Any = "") -> Any:
    return value if value not in (None, "", False) and value != [] and value != {} else fallback


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
    "replace": lambda v, search, replacement="": text_of(v).replace(text_of(search), text_of(replacement))
    if text_of(search) else text_of(v),
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
    def __init__(self, variables: dict[str, Any], output: Callable[[str], str]) -> None:
        self.variables = variables
        self.output = output
        self.parts: list[str] = []
        self.size = 0
        self.iterations = 0

    def run(self, nodes: list[Any]) -> str:
        self._nodes(nodes)
        return "".join(self.parts)

    def _write(self, text: str) -> None:
        self.size += len(text)
        if self.size > MAX_OUTPUT:
            raise TemplateError(f"the personalized text is larger than {MAX_OUTPUT} characters")
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
                self.iterations += 1
                if self.iterations > MAX_ITERATIONS:
                    raise TemplateError(f"more than {MAX_ITERATIONS} foreach rounds")
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
                index = int(_number(key))
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
        arguments = [self._value(part) for part in expression.parts]
        function = _MODIFIERS[expression.value] if kind == "modifier" else _FUNCTIONS[expression.value]
        try:
            result = function(*arguments)
        except TypeError:
            raise TemplateError(f"{expression.value}: wrong number of arguments") from None
        if isinstance(result, str) and len(result) > MAX_OUTPUT:
            raise TemplateError(f"{expression.value}: result too large")
        return result
