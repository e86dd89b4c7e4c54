"""StateStore.update skips decoding the bytes it wrote itself (its memo of what it wrote), and still sees
what another writer stored since: the stored state is the same as with a decode every time."""

from __future__ import annotations

from contextwarden.store.state import StateStore
from contextwarden.util.sealing import Sealer


def _merge(new):
    return lambda cur: {**(cur or {}), **new}


def _run(store: StateStore, other: StateStore) -> list:
    seen = []
    for i in range(6):
        seen.append(store.update("clearing", "s1", _merge({f"toolu_{i}": {"tokens": i, "stub": f"stub {i}"}})))
        if i == 3:  # another process on the same file adds a record in between
            other.update("clearing", "s1", _merge({"toolu_other": {"tokens": 99}}))
    return seen


def test_update_round_trips_to_the_same_state(tmp_path, monkeypatch):
    decodes = []
    a = StateStore(tmp_path / "a.sqlite")
    real = a.decode
    monkeypatch.setattr(a, "decode", lambda blob: decodes.append(1) or real(blob))
    seen = _run(a, StateStore(tmp_path / "a.sqlite"))
    # the reference: a store decoding every time (no memo of its writes)
    b = StateStore(tmp_path / "b.sqlite")
    b._written.put = lambda *args: None
    ref = _run(b, StateStore(tmp_path / "b.sqlite"))
    assert seen == ref
    assert "toolu_other" in seen[-1] and len(seen[-1]) == 7  # the other writer's record was not lost
    assert StateStore(tmp_path / "a.sqlite").get("clearing", "s1") == StateStore(tmp_path / "b.sqlite").get("clearing", "s1") == seen[-1]
    assert len(decodes) == 1  # only the bytes the other writer stored were decoded


def test_sealed_updates_round_trip(tmp_path):
    sealer = Sealer(b"k" * 32)
    a = StateStore(tmp_path / "s.sqlite", sealer)
    seen = _run(a, StateStore(tmp_path / "s.sqlite", sealer))
    assert StateStore(tmp_path / "s.sqlite", sealer).get("clearing", "s1") == seen[-1]
    assert a.load("clearing", "s1") != b"" and b"stub 5" not in a.load("clearing", "s1")
