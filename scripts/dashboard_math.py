"""The dashboard's PromQL, evaluated on scrapes taken here (``scripts/dashboard.py``).

``docs/grafana-dashboard.json`` is the one source of the queries: ``parse`` reads the small part
of PromQL its panels use, and ``evaluate`` computes each query on two scrapes, the way
Prometheus would on the samples it stored:

    expr     := aggr | quantile | rate | selector
    aggr     := ("sum" | "max") ["by" "(" labels ")"] "(" expr ")"
    quantile := "histogram_quantile" "(" number "," expr ")"
    rate     := "rate" "(" selector "[" duration "]" ")"
    selector := metric ["{" label ("=" | "!=") string, ... "}"]

- ``rate``: a counter's increase between two scrapes over the seconds between them; a drop is a
  restart (the increase is then the new value, as Prometheus counts resets); a series missing
  from the earlier scrape of a target that answered it was born in between (prometheus-client
  creates a labelled series at its first increment), so it counts from 0. The range in brackets
  is Grafana's window (5m); here the window is whatever the two scrapes given span.
  Prometheus also extrapolates to the window's edges; with the window given exactly by the two
  scrapes there is nothing to extrapolate.
- ``histogram_quantile``: ``histogram_quantile`` below, Prometheus' interpolation of classic
  buckets, on the bucket series grouped by every label but ``le``.
- each target's samples carry an ``instance`` label (its address), as Prometheus adds one.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
Vector = dict[Labels, float]
# What Prometheus adds to every scraped sample: they are on no family of the exposition.
TARGET_LABELS = ("instance", "job")


# --- histogram_quantile ------------------------------------------------------------------------


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float:
    """The ``q``-quantile of classic histogram buckets, ``(upper bound, cumulative count)``
    pairs in any order, as Prometheus' ``histogram_quantile`` computes it:

    - NaN for a NaN ``q``, -Inf below 0, +Inf above 1;
    - NaN when the highest bound is not +Inf, with fewer than two buckets, or no observations;
    - buckets of the same bound are added up, and counts forced to not decrease (the envelope);
    - the rank ``q * count`` falls in the first bucket whose count reaches it; in the +Inf
      bucket the answer is the highest finite bound; in the lowest bucket, interpolated from 0
      (or that bucket's bound itself if it is at most 0); else interpolated linearly between
      the bucket's lower and upper bound.
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    ordered = sorted(buckets, key=lambda b: b[0])
    if not ordered or ordered[-1][0] != math.inf:
        return math.nan
    merged: list[list[float]] = []
    for bound, count in ordered:
        if merged and merged[-1][0] == bound:
            merged[-1][1] += count
        else:
            merged.append([bound, count])
    highest = -math.inf
    for b in merged:
        highest = max(highest, b[1])
        b[1] = highest
    if len(merged) < 2:
        return math.nan
    total = merged[-1][1]
    if total == 0:
        return math.nan
    rank = q * total
    # The first bucket (the +Inf one left out of the search) whose count reaches the rank.
    index = next((i for i, b in enumerate(merged[:-1]) if b[1] >= rank), len(merged) - 1)
    if index == len(merged) - 1:
        return merged[-2][0]
    upper, count = merged[index]
    if index == 0:
        if upper <= 0:
            return upper
        lower = 0.0
    else:
        lower, below = merged[index - 1]
        count -= below
        rank -= below
    return lower + (upper - lower) * (rank / count)


# --- scrapes -----------------------------------------------------------------------------------


@dataclass
class Scrape:
    """One round of scrapes: every sample of every target that answered, at ``at`` (seconds)."""

    at: float
    samples: dict[str, Vector] = field(default_factory=dict)  # sample name -> series
    up: set[str] = field(default_factory=set)  # the instances that answered

    def add(self, instance: str, text: str) -> None:
        """A target's exposition text; its samples get ``instance``."""
        self.up.add(instance)
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = {**s.labels, "instance": instance}
                self.samples.setdefault(s.name, {})[_key(labels)] = float(s.value)


def _key(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


# --- the PromQL subset -------------------------------------------------------------------------


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...] = ()  # (label, "=" or "!=", value)
    range: str | None = None

    def matches(self, labels: Labels) -> bool:
        have = dict(labels)
        return all((have.get(k, "") == v) == (op == "=") for k, op, v in self.matchers)


@dataclass(frozen=True)
class Rate:
    arg: Selector


@dataclass(frozen=True)
class Aggregate:
    op: str  # "sum" or "max"
    by: tuple[str, ...] | None
    arg: Expr


@dataclass(frozen=True)
class Quantile:
    q: float
    arg: Expr


Expr = Selector | Rate | Aggregate | Quantile

_TOKEN = re.compile(
    r"\s*(?:(?P<duration>\d+[smhdw]\b)|(?P<number>\d+(?:\.\d+)?)|(?P<name>[A-Za-z_:][\w:]*)"
    r'|(?P<string>"(?:[^"\\]|\\.)*")|(?P<op>!=|[(){}\[\],=]))'
)


class PromQLError(ValueError):
    """A query outside the subset ``parse`` reads."""


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text.rstrip()):
            m = _TOKEN.match(text, pos)
            if m is None or m.lastgroup is None:
                raise PromQLError(f"cannot read {text[pos:]!r} in {text!r}")
            self.tokens.append((m.lastgroup, m.group(m.lastgroup)))
            pos = m.end()
        self.i = 0

    def peek(self) -> str | None:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else None

    def take(self, kind: str | None = None, value: str | None = None) -> str:
        if self.i >= len(self.tokens):
            raise PromQLError(f"{self.text!r} ends early")
        k, v = self.tokens[self.i]
        if (kind and k != kind) or (value and v != value):
            raise PromQLError(f"expected {value or kind}, found {v!r} in {self.text!r}")
        self.i += 1
        return v

    def expr(self) -> Expr:
        name = self.take("name")
        if name in ("sum", "max"):
            by = self.by()
            self.take(value="(")
            arg = self.expr()
            self.take(value=")")
            return Aggregate(name, by if by is not None else self.by(), arg)
        if name == "histogram_quantile":
            self.take(value="(")
            q = float(self.take("number"))
            self.take(value=",")
            arg = self.expr()
            self.take(value=")")
            return Quantile(q, arg)
        if name == "rate":
            self.take(value="(")
            sel = self.selector(self.take("name"))
            self.take(value=")")
            if sel.range is None:
                raise PromQLError(f"rate() needs a range in {self.text!r}")
            return Rate(sel)
        sel = self.selector(name)
        if sel.range is not None:
            raise PromQLError(f"a range outside rate() in {self.text!r}")
        return sel

    def by(self) -> tuple[str, ...] | None:
        if self.peek() != "by":
            return None
        self.take()
        self.take(value="(")
        labels = [self.take("name")]
        while self.peek() == ",":
            self.take()
            labels.append(self.take("name"))
        self.take(value=")")
        return tuple(labels)

    def selector(self, metric: str) -> Selector:
        matchers: list[tuple[str, str, str]] = []
        if self.peek() == "{":
            self.take()
            while self.peek() != "}":
                label = self.take("name")
                op = self.take("op")
                if op not in ("=", "!="):
                    raise PromQLError(f"matcher {op!r} in {self.text!r}")
                value = self.take("string")[1:-1].encode().decode("unicode_escape")
                matchers.append((label, op, value))
                if self.peek() == ",":
                    self.take()
            self.take(value="}")
        window = None
        if self.peek() == "[":
            self.take()
            window = self.take("duration")
            self.take(value="]")
        return Selector(metric, tuple(matchers), window)


def parse(text: str) -> Expr:
    """The query ``text``; ``PromQLError`` if it is outside the subset."""
    parser = _Parser(text)
    expr = parser.expr()
    if parser.peek() is not None:
        raise PromQLError(f"unexpected {parser.peek()!r} in {text!r}")
    return expr


def selectors(expr: Expr) -> list[Selector]:
    """Every metric the query reads."""
    if isinstance(expr, Selector):
        return [expr]
    return selectors(expr.arg)


def groupings(expr: Expr) -> list[tuple[Selector, tuple[str, ...]]]:
    """Each ``by (...)`` of the query, with the metric whose labels it names."""
    found = []
    while not isinstance(expr, Selector):
        if isinstance(expr, Aggregate) and expr.by is not None:
            found.append((selectors(expr)[0], expr.by))
        expr = expr.arg
    return found


def evaluate(expr: Expr, prev: Scrape, cur: Scrape) -> Vector:
    """``expr`` at ``cur``, its rates over the time since ``prev``."""
    if isinstance(expr, Selector):
        return {k: v for k, v in cur.samples.get(expr.metric, {}).items() if expr.matches(k)}
    if isinstance(expr, Rate):
        return _rate(expr.arg, prev, cur)
    if isinstance(expr, Aggregate):
        groups: dict[Labels, list[float]] = defaultdict(list)
        for labels, value in evaluate(expr.arg, prev, cur).items():
            # Without ``by``: one series, no labels.
            keep = {} if expr.by is None else {k: v for k, v in labels if k in expr.by}
            groups[_key(keep)].append(value)
        agg = sum if expr.op == "sum" else max
        return {k: float(agg(vs)) for k, vs in groups.items()}
    buckets: dict[Labels, list[tuple[float, float]]] = defaultdict(list)
    for labels, value in evaluate(expr.arg, prev, cur).items():
        le = dict(labels).get("le")
        if le is None:
            continue
        rest = _key({k: v for k, v in labels if k != "le"})
        buckets[rest].append((float(le), value))
    return {k: histogram_quantile(expr.q, bs) for k, bs in buckets.items()}


def _rate(sel: Selector, prev: Scrape, cur: Scrape) -> Vector:
    elapsed = cur.at - prev.at
    if elapsed <= 0:
        return {}
    before = prev.samples.get(sel.metric, {})
    out: Vector = {}
    for labels, value in cur.samples.get(sel.metric, {}).items():
        if not sel.matches(labels):
            continue
        instance = dict(labels).get("instance", "")
        if labels in before:
            start = before[labels]
        elif instance in prev.up:
            start = 0.0  # born since the earlier scrape
        else:
            continue  # that target did not answer then: no rate
        out[labels] = (value - start if value >= start else value) / elapsed
    return out


def series(
    expr: Expr, scrapes: Sequence[Scrape], window: int
) -> dict[Labels, list[tuple[float, float | None]]]:
    """``expr`` at each scrape from the ``window``-th on, over the ``window`` scrapes before it:
    each result series as (time, value) points, None where it had no value (a gap)."""
    points: dict[Labels, dict[int, float]] = defaultdict(dict)
    steps = range(window, len(scrapes))
    for i in steps:
        for labels, value in evaluate(expr, scrapes[i - window], scrapes[i]).items():
            if not math.isnan(value):
                points[labels][i] = value
    return {
        labels: [(scrapes[i].at, byindex.get(i)) for i in steps]
        for labels, byindex in sorted(points.items())
    }


def legend(template: str, labels: Labels) -> str:
    """Grafana's legend format: ``{{task}}`` replaced by the series' label."""
    have = dict(labels)
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: have.get(m.group(1), ""), template)
    return text or ", ".join(f"{k}={v}" for k, v in labels) or "value"
