"""tui.format: ids shortened so that different sessions stay different on screen; signed dollars and shares."""

from __future__ import annotations

from tui import format as fmt


def test_short_id_keeps_time_ordered_sessions_apart():
    # two Codex sessions started a minute apart (UUIDv7: the first 8 digits are the clock)
    a, b = "01a215e7-6f46-7f83-b8bc-036098991a7d", "01a215e7-d0d0-7ef3-b3cd-99bdc0ae1f54"
    assert fmt.short_id(a) == "98991a7d" and fmt.short_id(b) == "c0ae1f54"
    assert len(fmt.short_id(a, 24)) == 24 and fmt.short_id(a, 40) == a


def test_short_id_of_other_ids_is_their_start():
    assert fmt.short_id("3f2a9c0e-41b7-4c11-9a2e-0123456789ab") == "3f2a9c0e"  # v4 (Claude Code)
    assert fmt.short_id("h-0123456789abcdef") == "01234567"
    assert fmt.short_id("") == "–" and fmt.short_id("abc") == "abc"


def test_dollars_and_shares_read_as_signed_amounts():
    # a session whose memory injections cost a little more than the client would have paid showed "≈$-0.00 -0%"
    assert fmt.usd(1234.5) == "$1,234.50" and fmt.usd(-0.42) == "-$0.42"
    assert fmt.usd(-0.001) == "$0.00" and fmt.usd(0.004) == "$0.00"
    assert fmt.share(12.4) == "12%" and fmt.share(4.24) == "4.2%" and fmt.share(-0.3) == "-0.3%"
    assert fmt.share(-0.04) == "0%" and fmt.share(-12.6) == "-13%"
