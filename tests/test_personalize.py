"""The personalization language (SMTPeter's Smarty-like templates), without any I/O."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from smtpeter.ingress.http.template import Budget, Template, TemplateError, has_tags, is_variable_name


def render(template: str, /, **variables: object) -> str:
    return Template(template).render(variables)


class PersonalizeTests(unittest.TestCase):
    def test_variables_and_lookups(self) -> None:
        self.assertEqual(render("Dear {$firstname} {$last-name},", firstname="Jane", **{"last-name": "Doe"}),
                         "Dear Jane Doe,")
        order = {"lines": [{"price": 10}, {"price": 2.5}], "id": "A7"}
        self.assertEqual(render("{$order.id}: {$order.lines[1].price} {$order.lines.0.price}", order=order),
                         "A7: 2.5 10")
        self.assertEqual(render("[{$missing}] [{$order.nope.deeper}] [{$order.lines[9]}]", order=order),
                         "[] [] []")
        self.assertEqual(render("{$yes}{$no}{$none}{$list}", yes=True, no=False, none=None, list=[1]), "1")

    def test_modifiers(self) -> None:
        cases = [
            ("{$s|toupper}", "HELLO THERE MY FRIEND"),
            ("{$s|ucfirst}", "Hello there my friend"),
            ("{$s|truncate:10}", "hello..."),
            ("{$s|truncate:10:'':true}", "hello ther"),
            ("{$s|count_words} {$s|strlen} {$s|count_characters}", "4 21 18"),
            ("{$s|replace:'friend':'pal'|cat:'!'}", "hello there my pal!"),
            ("{$s|substr:6:5}", "there"),
            ("{$s|strstr:'my'}", "my friend"),
            ("{$s|spacify:'.'|truncate:5:''}", "h.e.l"),
            ("{$html|escape}", "&lt;b&gt;&amp;&quot;"),
            ("{$html|escape:'url'}", "%3Cb%3E%26%22"),
            ("{$s|urlencode}", "hello+there+my+friend"),
            ("{$encoded|urldecode}", "a+b c"),
            ("{$s|md5}", hashlib.md5(b"hello there my friend").hexdigest()),  # noqa: S324
            ("{$s|base64_encode|base64_decode}", "hello there my friend"),
            ("{$lines|nl2br}", "a<br />\nb"),
            ("{$lines|indent:2}", "  a\n  b"),
            ("{$missing|default:'friend'}", "friend"),
            ("{$s|default:'friend'|truncate:5:''}", "hello"),
            ("{$list|count} {$missing|count}", "3 0"),
            ("{if $missing|empty}empty{/if}", "empty"),
            ("[{$padded|trim}]", "[x]"),
            ("{hash($s, 'sha256')}", hashlib.sha256(b"hello there my friend").hexdigest()),
        ]
        variables = {"s": "hello there my friend", "html": '<b>&"', "lines": "a\nb", "list": [1, 2, 3],
                     "encoded": "a%2Bb+c", "padded": "  x \n"}
        for text, expected in cases:
            self.assertEqual(Template(text).render(variables), expected, text)

    def test_conditions_and_arithmetic(self) -> None:
        ages = "{if $age >= 18}adult{elseif $age > 12}teen{else}child{/if}"
        self.assertEqual([render(ages, age=a) for a in (30, "15", 3, None)],
                         ["adult", "teen", "child", "child"])
        logic = "{if $a == 'x' and not $b}1{/if}{if $a eq 'y' or $b}2{/if}"
        self.assertEqual(render(logic, a="x", b=""), "1")
        self.assertEqual(render("{if ($n + 1) * 2 == 8}yes{/if}", n="3"), "yes")
        arithmetic = "{$n + 10} {$n * 2.5} {$n / 2} {$n % 3} {$n / 0} {$text + 1}"
        self.assertEqual(render(arithmetic, n=7, text="abc"), "17 17.5 3.5 1 0 1")
        # Text compares as text, numbers as numbers ("10" > "9" numerically).
        self.assertEqual(render("{if $a > $b}num{/if}{if $c < $d}text{/if}", a="10", b="9", c="abc", d="abd"),
                         "numtext")
        self.assertEqual(render("{if '0'}t{else}f{/if}{if 'false'}t{else}f{/if}"), "ft")

    def test_loops_and_assign(self) -> None:
        items = [{"name": "pen", "qty": 2}, {"name": "ink", "qty": 1}]
        loop = "{foreach $item in $items}{$item.name} x{$item.qty}; {/foreach}"
        self.assertEqual(render(loop, items=items), "pen x2; ink x1; ")
        pairs = "{foreach $m as $k => $v}{$k}={$v},{/foreach}"
        self.assertEqual(render(pairs, m={"a": 1, "b": 2}), "a=1,b=2,")
        self.assertEqual(render("{foreach $none as $v}x{foreachelse}empty{/foreach}", none=[]), "empty")
        ranges = "{foreach $i in 3|range}{$i}{/foreach} {foreach $i in 2|range:4}{$i}{/foreach}"
        self.assertEqual(render(ranges), "012 234")
        self.assertEqual(render("{assign $n * 2 to $double}{$double}", n=21), "42")
        # The loop variable does not leak out of its loop.
        self.assertEqual(render("{foreach $x in $l}{/foreach}{$x}", l=[1, 2], x="outer"), "outer")

    def test_text_that_is_not_a_tag_passes_through(self) -> None:
        text = "a{color:red} p { margin: 0 } {\"json\": 1} {ldelim}$x{rdelim} {literal}{$x}{if}{/literal} $x"
        self.assertEqual(render(text, x="X"), 'a{color:red} p { margin: 0 } {"json": 1} {$x} {$x}{if} $x')
        self.assertFalse(has_tags("body { color: red } {{ handlebars }}"))
        self.assertTrue(has_tags("Hi {$name}"))

    def test_errors_name_the_problem(self) -> None:
        cases = [
            ("{$x", "unclosed tag"),
            ("{if $x}a", "missing {/if}"),
            ("a\n{/if}", "line 2: {/if} where it does not belong"),
            ("{foreach $x in $l}a{/if}", "{/if} where it does not belong"),
            ("{$x|bogus}", "unknown modifier 'bogus'"),
            ("{$x +}", "ends too soon"),
            ("{$x ? 1}", "cannot read"),
            ("{if $x}{else}{elseif $y}{/if}", "{elseif} where it does not belong"),
            ("{$x|escape:'rot13'}", "unknown kind"),
            ("{hash($x, 'crc')}", "unknown algorithm"),
            ("{$x|substr:1:2:3:4}", "wrong number of arguments"),
            ("{assign 1 to x}", "expected a $variable"),
            ("{literal}never closed", "{literal} without {/literal}"),
            ("{$x + " + "(" * 100 + "1" + ")" * 100 + "}", "nested too deeply"),
            ("{if 1}" * 100 + "{/if}" * 100, "nested more than"),
        ]
        for text, message in cases:
            with self.assertRaises(TemplateError, msg=text) as caught:
                render(text, x="v", l=[1])
            self.assertIn(message, str(caught.exception), text)

    def test_cost_is_bounded(self) -> None:
        def costly(template: str, budget: Budget | None = None, **variables: object) -> None:
            with self.assertRaises(TemplateError, msg=template):
                Template(template).render(variables, budget=budget or Budget(characters=100_000))

        costly("{foreach $a in $l}{foreach $b in $l}{foreach $c in $l}xxxx{/foreach}{/foreach}{/foreach}",
               l=list(range(100)))
        # Work is paid before it is done: no giant intermediate value is ever made.
        costly("{$s|spacify:$s}", budget=Budget(), s="x" * 20_000)
        costly("{$s|replace:'x':$s}", budget=Budget(), s="x" * 20_000)
        costly("{$s|indent:1000:$s}", budget=Budget(), s="x\n" * 20_000)
        costly("{foreach $i in 10000000|range}{/foreach}")
        # A cheap template over a big value: each round pays for what it reads.
        costly("{foreach $i in 100000|range}{if $s|md5 == 'z'}{/if}{/foreach}", budget=Budget(),
               s="x" * 10**6)
        doubling = "{assign $s|cat:$s to $s}" * 40
        costly(doubling, budget=Budget(), s="x")
        # One budget serves every template of a request.
        shared = Budget(characters=50_000)
        for _ in range(4):
            Template("{$s}").render({"s": "x" * 10_000}, budget=shared)
        costly("{$s}", budget=shared, s="x" * 20_000)
        # Deep expressions are refused when parsed, not by the interpreter's recursion limit.
        with self.assertRaises(TemplateError):
            Template("{$s" + "|trim" * 3000 + "}")
        with self.assertRaises(TemplateError):
            Template("{$a" + " + $a" * 3000 + "}")

    def test_hostile_numbers_are_errors_or_nothing(self) -> None:
        huge = 10**400
        for template, variables in (
            ("{$l[$i]}", {"l": [1], "i": float("inf")}),
            ("{$p * 1.21}", {"p": huge}), ("{$p / 3}", {"p": huge}), ("{$p % 7}", {"p": huge}),
            ("{$t|indent:$n}", {"t": "x", "n": -(10**20)}),
            ("{$t|truncate:$n}", {"t": "x", "n": float("nan")}), ("{$t|substr:$n:$n}", {"t": "x", "n": huge}),
            ("{foreach $i in $n|range}{/foreach}", {"n": float("inf")}),
            ("{$x * 1e308 * 10}", {"x": "1e308"}), ("{$x + 1}", {"x": "1" * 5000}),
            ("{$l['1e400']}", {"l": [1, 2]}),
        ):
            try:
                Template(template).render(variables)
            except TemplateError:
                pass  # an error that says so is fine; anything else is not
        self.assertEqual(render("{$x + 1}", x="1" * 5000), "1")  # not a number we read: 0

    def test_smarty_details(self) -> None:
        defaults = "{$n|default:'none'} {$f|default:'none'} {$e|default:'none'}"
        self.assertEqual(render(defaults, n=0, f=False, e=""), "0  none")
        self.assertEqual(render("{if $a}A{else if $b}B{else}C{/if}", a=0, b=1), "B")
        self.assertEqual(render("{$a + $b} {$ten / 3}", a=0.1, b=0.2, ten=10), "0.3 3.3333333333333")
        self.assertEqual(render("[{$s|truncate:0}]", s="abc"), "[]")
        self.assertEqual(render("{$s|truncate:30}", s="word" + " " * 100_000 + "x"), "word...")

    def test_output_hook_sees_every_value(self) -> None:
        def no_breaks(text: str) -> str:
            if "\n" in text:
                raise TemplateError("line break")
            return text

        self.assertEqual(Template("Subject: {$s}").render({"s": "fine"}, no_breaks), "Subject: fine")
        with self.assertRaises(TemplateError):
            Template("Subject: {$s}").render({"s": "x\nBcc: evil@example.net"}, no_breaks)

    def test_variable_names(self) -> None:
        self.assertTrue(all(map(is_variable_name, ["a", "firstName", "last-name", "x_1"])))
        self.assertFalse(any(map(is_variable_name, ["1a", "-a", "_a", "a b", "", "a.b"])))

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=st.sampled_from(list("{}$|:'\"()[]. ifelsoreachtn0123abx+-*/!=<>\n")),
                   max_size=60))
    def test_any_text_renders_or_fails_cleanly(self, text: str) -> None:
        try:
            result = Template(text).render({"a": 1, "b": [1, 2], "x": "x"})
        except TemplateError:
            return
        self.assertIsInstance(result, str)
        if not has_tags(text):
            self.assertEqual(result, text)
