"""``contextwarden eval``'s verdict: every target of the benchmark is checked, not only the first."""

from contextwarden.offline.memory import evalrun


def test_longmemeval_needs_recall_any_and_recall_all(capsys):
    assert evalrun._target("longmemeval", 0.97, 0.95)
    assert not evalrun._target("longmemeval", 0.967, 0.99)  # recall_any short
    assert not evalrun._target("longmemeval", 1.0, 0.90)  # recall_all short
    out = capsys.readouterr().out
    assert "target: recall_all >= 0.95: NOT met (0.900)" in out
    assert "target: recall_any >= 0.97: NOT met (0.967)" in out


def test_locomo_has_one_target():
    assert evalrun._target("locomo", 0.85) and not evalrun._target("locomo", 0.849)
