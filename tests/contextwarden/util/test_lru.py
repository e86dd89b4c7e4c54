"""util.lru.LRU: what the memos and the records kept per session rely on."""

from contextwarden.util.lru import LRU


def test_a_record_put_again_while_young_counts_once():
    """A per-session record replaced on each update (put again) is one entry: it does not push the others out."""
    lru = LRU(4)
    lru.put("a", 1)
    lru.put("b", 1)
    for n in range(2, 6):
        lru.put("a", n)
    assert lru.peek("a") == 5, "the latest value"
    assert lru.peek("b") == 1, "the other record is kept"
    assert len(lru) == 2


def test_get_without_compute_finds_and_refreshes_but_remembers_no_miss():
    lru = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)  # (a is old now)
    assert lru.get("z") is None
    assert lru.peek("z") is None and len(lru) == 2
    assert lru.get("a") == 1  # used again: young
    lru.put("c", 3)
    assert lru.peek("a") == 1, "a used lately stays"
    assert lru.peek("b") is None, "b, not used since, went first"


def test_a_record_put_again_from_the_old_generation_is_held_once():
    lru = LRU(4)
    for k in "abc":  # (c makes a and b old)
        lru.put(k, 1)
    lru.put("a", 2)
    assert len(lru) == 3, "the older value of a let go"
    assert sorted(lru.items()) == [("a", 2), ("b", 1), ("c", 1)]
