"""A message as the turns it holds, whatever the client's framing: what memory stores and searches.

Clients frame one conversation differently: one message per turn, consecutive turns of one speaker
merged into one message, each turn written after its date or time (chat exports, bridges:
``(1:10 pm on 27 March, 2023) Audrey: ...``, ``[2023-03-27 13:10] Audrey: ...``). Memory stores the
same units either way: a message whose lines open with speaker headers is cut into one unit per header,
and a date or time written before a speaker's name is lifted out of the text into the unit's ``when``
(kept with the item, shown on its provenance line): left in, the same date on every turn of a session
dominates both the embedding and the lexical match of each short turn.

Only what reads unambiguously as a header is taken: a name of at most three capitalised words followed
by a colon at the start of a line, optionally after a bracketed date or time; a message is cut only when
its headers carry dates or a speaker comes twice ("Summary: ...\nNext: ..." stays whole). A message
whose first line is not a header is one unit, as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta

_MONTHS = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*"
# a date or a time: 13:10, 1:10 pm, 2023-03-27, 27/03/2023, 27 March 2023, March 27
_DATEISH = re.compile(rf"\d{{1,2}}:\d{{2}}|\d{{4}}-\d{{1,2}}-\d{{1,2}}|\d{{1,2}}/\d{{1,2}}/\d{{2,4}}|"
                      rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS}\b|\b{_MONTHS}\s+\d{{1,2}}\b", re.I)
# "(date) Name: " or "[date] Name: " or "date, time - Name: " (WhatsApp's export), or "Name: "
_HEADER = re.compile(
    r"^(?:(?:\((?P<p>[^()\n]{4,48})\)|\[(?P<b>[^\[\]\n]{4,48})\]|(?P<w>\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4},? \d{1,2}:\d{2}"
    r"(?: ?[ap]m)?) -)\s*)?"
    r"(?P<name>[A-Z][\w.'\-]{0,30}(?: [A-Z][\w.'\-]{0,30}){0,2}):[ \t]")


@dataclass(frozen=True)
class Unit:
    """One turn: its text (``Speaker: words``, the date lifted out), the speaker, the date as written."""

    text: str
    speaker: str | None = None
    when: str | None = None


def _header(line: str) -> tuple[str | None, str | None, int] | None:
    """(speaker, when, where the text after the date starts) of a header line, or None."""
    m = _HEADER.match(line)
    if m is None:
        return None
    when = m.group("p") or m.group("b") or m.group("w")
    if when is not None and not _DATEISH.search(when):
        return None  # "(see above) Note: ..." is not a dated turn
    return m.group("name"), when, m.start("name")


def undated(line: str) -> str:
    """A line without the date written before its speaker header (a summary quotes a dated turn whole)."""
    h = _header(line) if line[:1] in "([0123456789" else None
    return line[h[2]:] if h is not None and h[1] is not None else line


def units(text: str) -> list[Unit]:
    """The turns ``text`` holds (see the module's docstring); ``[Unit(text)]`` when it is not framed
    as turns."""
    lines = text.split("\n")
    first = _header(lines[0])
    if first is None:
        return [Unit(text)]
    out: list[Unit] = []
    cur: list[str] = []
    speaker, when = first[0], first[1]
    for line in lines:
        h = _header(line) if cur else first
        if h is not None:
            if cur:
                out.append(Unit("\n".join(cur).strip(), speaker, when))
            speaker, when = h[0], h[1]
            cur = [line[h[2]:]]
        else:
            cur.append(line)
    out.append(Unit("\n".join(cur).strip(), speaker, when))
    out = [u for u in out if u.text]
    names = [u.speaker for u in out]
    if len(out) > 1 and all(u.when is None for u in out) and len(set(names)) == len(names):
        # no dates and no speaker twice: as likely "Summary: ...\nNext: ..." as a transcript
        return [Unit(text, first[0])]
    return out


_CLOCK = re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?(?:\s*[ap]\.?m\b\.?)?(?:\s+on\b)?,?\s*", re.I)


def day_written(when: str) -> str:
    """A turn's date as written, without its clock time ("1:56 pm on 8 May, 2023" -> "8 May, 2023");
    a bare time stays as it is."""
    return _CLOCK.sub("", when).strip(" ,") or when


def unit_texts(text: str) -> list[str]:
    """The texts of :func:`units` that differ from ``text`` itself (what a history check also knows it by)."""
    got = units(text)
    return [u.text for u in got] if len(got) > 1 or got[0].text != text else []


def query_text(text: str) -> str:
    """A message as a query: its turns without the dates written before them."""
    got = units(text)
    return text if len(got) == 1 and got[0].text == text else "\n".join(u.text for u in got)


_MONTH_NUM = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), start=1)}
# a day with its year: 27 March, 2023 / March 27, 2023 / 2023-03-27 (a day without a year is not a date)
_DAY = re.compile(rf"\b(?P<d1>\d{{1,2}})(?:st|nd|rd|th)?\s+(?P<m1>{_MONTHS}),?\s+(?P<y1>\d{{4}})\b|"
                  rf"\b(?P<m2>{_MONTHS})\s+(?P<d2>\d{{1,2}})(?:st|nd|rd|th)?,?\s+(?P<y2>\d{{4}})\b|"
                  rf"\b(?P<y3>\d{{4}})-(?P<m3>\d{{1,2}})-(?P<d3>\d{{1,2}})\b", re.I)


def dates_in(text: str | None) -> list[date]:
    """The days ``text`` names with their year (a question's "on 16 June, 2023", a turn's ``when``)."""
    out = []
    for m in _DAY.finditer(text or ""):
        g = {k: v for k, v in m.groupdict().items() if v}
        month = g.get("m1") or g.get("m2")
        try:
            out.append(date(int(g.get("y1") or g.get("y2") or g["y3"]),
                            _MONTH_NUM[month[:3].lower()] if month else int(g["m3"]),
                            int(g.get("d1") or g.get("d2") or g["d3"])))
        except (KeyError, ValueError):
            continue
    return out


_MONTH_YEAR = re.compile(rf"\b(?P<m>{_MONTHS}),?\s+(?P<y>\d{{4}})\b", re.I)


def spans_in(text: str | None) -> list[tuple[date, date]]:
    """The periods ``text`` names with their year, as (first day, last day): a day ("on 16 June, 2023")
    is one day long, a month ("in December 2023") its whole month."""
    text = text or ""
    out = [(d, d) for d in dates_in(text)]
    days = [m.span() for m in _DAY.finditer(text)]
    for m in _MONTH_YEAR.finditer(text):
        if any(a <= m.start() < b for a, b in days):
            continue  # the month of a day already named
        y, mo = int(m.group("y")), _MONTH_NUM[m.group("m")[:3].lower()]
        out.append((date(y, mo, 1), date(y + mo // 12, mo % 12 + 1, 1) - timedelta(days=1)))
    return out


def near(when: str | None, spans: list[tuple[date, date]], slack: int) -> bool:
    """Whether the day ``when`` names is within ``slack`` days of one of ``spans`` (:func:`spans_in`)."""
    got = dates_in(when) if when else []
    return bool(got) and any((a - got[0]).days <= slack and (got[0] - b).days <= slack for a, b in spans)
