"""The report's content model: sections of paragraphs, lists, tables and plots, and number formats.

The sections are built from an ``Analysis`` (``report.guarantee``, ``report.privacy_tables``,
``report.training``, assembled in ``report.document``); ``report.render`` turns them into HTML
and Markdown. ``**bold**``, ```code``` and a backslash before a character that must stay literal
are the only inline markup; text quoted from a run's files goes through :func:`literal`, and the
renderers escape everything else, so quoted text never becomes markup, HTML or a table break.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Para:
    """A paragraph; ``**bold**`` and ```code``` are the only markup."""

    text: str


@dataclass(frozen=True)
class Bullets:
    """A bulleted list."""

    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """A table with a caption; ``warn`` holds the indices of rows to highlight."""

    caption: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    warn: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Plot:
    """A figure: written to ``plots/<name>.png`` and embedded in the HTML."""

    name: str
    png: bytes
    alt: str
    caption: str


Block = Para | Bullets | Table | Plot


@dataclass(frozen=True)
class Section:
    """A titled section of the report."""

    title: str
    anchor: str
    blocks: tuple[Block, ...]


def literal(text: object) -> str:
    """Return ``text`` (a value quoted from a run's files) with its markup characters escaped.

    Use it for everything a client, a node or a run's files supply (ids, labels, reasons, error
    text, config values): star, backtick and backslash get a backslash, so it shows as written.
    """
    return re.sub(r"([\\*`])", r"\\\1", str(text))


def fmt_eps(x: float) -> str:
    """Return ε as written in the report: three decimals."""
    return f"{x:.3f}"


def fmt_num(x: float) -> str:
    """Return a parameter (σ, clip norm, budget) with four significant digits."""
    return f"{x:.4g}"


def delta_words(delta: float) -> str:
    """Return δ in words: one chance in 10^k, else the probability."""
    k = -math.log10(delta)
    if abs(k - round(k)) < 1e-9 and 1 <= round(k) <= 15:
        return f"one chance in {10 ** round(k):,}"
    return f"probability {delta:g}"


def fmt_rate(q: float) -> str:
    """Return a sampling rate, with 1/n beside it when it is one."""
    inv = 1 / q
    return f"{q:.4g} (1/{round(inv)})" if abs(inv - round(inv)) < 1e-6 else f"{q:.4g}"


def span(values: Iterable[float], fmt: Callable[[float], str]) -> str:
    """Return the one value, or the smallest to the largest, of ``values``; ``-`` if none."""
    distinct = sorted(set(values))
    if not distinct:
        return "-"
    if len(distinct) == 1:
        return fmt(distinct[0])
    return f"{fmt(distinct[0])} to {fmt(distinct[-1])}"


def client_order(cid: str) -> tuple[int, str]:
    """Sort key of client ids: numeric ids in numeric order, then the others."""
    return (int(cid), "") if cid.isdigit() else (1 << 62, cid)
