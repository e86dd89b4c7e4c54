"""Logs, build and test output: error lines with context, warnings, summary lines, head and tail; the rest
counted (docs/compression.md)."""

from __future__ import annotations

import re

from .cleanup import shape
from .gaps import join_kept, mark_span
from .scan import line_starts, lines_matching, lines_with

ERROR = re.compile(
    r"(?i)(\berror\b|\berrors\b(?!\s*[:=]?\s*0\b)|\bfail(?:ed|ure|ures|ing|s)?\b|\bexception\b|traceback|\bpanic"
    r"|\bfatal\b|\bsegmentation fault|\bcore dumped|\bassert(?:ion)?(?:error)?\b|\babort(?:ed)?\b|\bdenied\b"
    r"|\bnot found\b|\bcannot\b|\bcould not\b|\bundefined reference|\bunresolved\b|\bexit (?:code|status) [1-9]"
    r"|^E\s{2,}|^\s*[✗✘×]\s|npm ERR!|\bERR!|make(?:\[\d+\])?: \*\*\*|\bFAIL\b|\bKilled\b|\bTimeout\b|\btimed out\b)")
# lines that say "0 errors" / "no errors" are not errors
NOT_ERROR = re.compile(r"(?i)\b(?:0|no|zero) (?:errors?|failures?|failed)\b|\berrors?: 0\b|\bfailures?: 0\b")
WARNING = re.compile(r"(?i)\bwarn(?:ing|ings)?\b|\bdeprecat")
# a summary line, in two regexes for speed (~3x: a regex of many alternatives tries each at every
# position of a line): the alternatives anchored at the start, tried there only, and the others
SUMMARY_START = re.compile(
    r"(?i)={3,}.*={3,}$|_{3,} .* _{3,}$|-{3,} .* -{3,}$|Ran \d+ tests?|(?:OK|FAILED)\b|Tests?:|Test Suites:|Finished\b"
    r"|Compiling\b.*\berror|\s*(?:PASS|FAIL|ERROR)\s|Done in\b|real\s+\d")
SUMMARY_ANYWHERE = re.compile(
    r"(?i)short test summary|\b\d+ (?:passed|failed|errors?|skipped|xfailed|xpassed|warnings?|deselected|tests?|examples?"
    r"|specs?|suites?)\b|\bBUILD (?:SUCCESS|SUCCESSFUL|FAILED|FAILURE)\b|\btest result:|\bexit code\b|\breturn(?:ed)? code\b")


def is_summary(stripped: str) -> bool:
    return bool(SUMMARY_START.match(stripped) or SUMMARY_ANYWHERE.search(stripped))
# "file.py:12: in test_x" / "  File "x.py", line 3" / "src/a.rs:10:5" — where an error happened
LOCATION = re.compile(r"^\s*File \"[^\"]+\", line \d+|^[\w./\\-]+\.\w+:\d+(?::\d+)?:")

# what a line must contain (lower case) to be looked at with the regexes above
ERROR_WORDS = ("error", "fail", "exception", "traceback", "panic", "fatal", "segmentation", "core dumped", "assert",
               "abort", "denied", "not found", "cannot", "could not", "undefined", "unresolved", "exit code",
               "exit status", "err!", "***", "killed", "timeout", "timed out", "e  ", "✗", "✘", "× ")
WARNING_WORDS = ("warn", "deprecat")
# (a line with only a word of the first kind can match only SUMMARY_START: "ok" is in many a line of prose)
SUMMARY_START_WORDS = ("===", "___", "---", "ran ", "ok", "finished", "pass", "done in", "real")
SUMMARY_ANYWHERE_WORDS = ("passed", "failed", "skipped", "error", "warning", "deselected", " test", "example", "spec",
                          "suite", "build ", "result", "exit code", "return")
# a location line has 'file "' or a colon and a digit (``a.py:12:``, whatever the extension): one
# regex pass with a literal first character instead of a find pass per file extension
LOCATION_WORDS = ('file "',)
COLON_DIGIT = re.compile(r":\d")

HEAD = 15
TAIL = 25
ERROR_CONTEXT = (2, 3)  # lines before, after
WARNING_CONTEXT = (0, 1)
MAX_WARNINGS = 30  # distinct (by shape) warnings kept with their context


Classes = tuple[list[int], list[int], set[int]]


def classify(lines: list[str]) -> Classes:
    """(error lines, warning lines, summary / location lines), by index: one ``find`` pass per keyword
    over the lower-cased text, then the regexes on the lines a keyword is in."""
    low = "\n".join(lines).lower()
    starts = line_starts(lines)
    errors, warnings, keep = [], [], set()
    # each regex only on the lines a keyword of its own is in (a regex of many alternatives costs ~20 µs
    # on a line): the same lines as every regex on every line that has any keyword
    err = lines_with(low, starts, ERROR_WORDS)
    warn = lines_with(low, starts, WARNING_WORDS)
    summ = lines_with(low, starts, SUMMARY_ANYWHERE_WORDS)
    summ_start = lines_with(low, starts, SUMMARY_START_WORDS) - summ
    loc = lines_with(low, starts, LOCATION_WORDS) | lines_matching(low, starts, COLON_DIGIT)
    for i in sorted(err | warn | summ | summ_start | loc):
        line = lines[i]
        if i in err and ERROR.search(line) and not NOT_ERROR.search(line):
            errors.append(i)
        elif i in warn and WARNING.search(line):
            warnings.append(i)
        if ((i in summ and is_summary(line.strip())) or (i in summ_start and SUMMARY_START.match(line.strip()))
                or (i in loc and LOCATION.search(line))):
            keep.add(i)
    return errors, warnings, keep


def is_log(classes: Classes) -> bool:
    """Does this read like a log or test run (at least two lines say error, warning or sum up)?"""
    return sum(map(len, classes)) >= 2


def compress_log(lines: list[str], budget_chars: int, classes: Classes, weights: list[int]) -> tuple[str, dict]:
    n = len(lines)
    errors, warnings, marked = classes
    kept_warnings: list[int] = []
    warn_shapes: set[str] = set()
    for i in warnings:
        k = shape(lines[i].strip())
        if k not in warn_shapes and len(warn_shapes) < MAX_WARNINGS:
            warn_shapes.add(k)
            kept_warnings.append(i)

    def build(context: bool) -> tuple[str, int]:
        keep = [False] * n
        mark_span(keep, 0, HEAD)
        mark_span(keep, n - TAIL, n)
        for i in marked:
            keep[i] = True
        for idx, (b, a) in ((errors, ERROR_CONTEXT), (kept_warnings, WARNING_CONTEXT)):
            for i in idx:
                if context:
                    mark_span(keep, i - b, i + a + 1)
                else:
                    keep[i] = True
        return join_kept(lines, keep, weights)

    text, kept = build(True)
    if len(text) > budget_chars:
        text, kept = build(False)  # too much context: the matched lines themselves (every error line stays)
    return text, {"lines": n, "kept_lines": kept, "errors": len(errors), "warnings": len(warnings)}
