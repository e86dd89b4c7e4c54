"""Search for a reference the model used: the texts that hold it as written come first."""

from __future__ import annotations

from types import SimpleNamespace

from contextwarden.memory.service import exact_first


def _hit(text: str):
    return SimpleNamespace(item=SimpleNamespace(text=text))


def test_hits_holding_the_query_as_written_come_first_in_their_order():
    hits = [_hit("the retry policy is configured somewhere"), _hit("see vendor/acme/retry_policy.toml"),
            _hit("retry policy notes"), _hit("vendor/acme/retry_policy.toml: max_retries = 3")]
    got = exact_first("vendor/acme/retry_policy.toml", hits)
    assert [h.item.text for h in got] == [hits[1].item.text, hits[3].item.text, hits[0].item.text, hits[2].item.text]
    assert exact_first("nothing holds this", hits) == hits
    assert exact_first("", hits) == hits
    # a multi-line quote (an Edit's old_string) is found by its first line too
    quote = "def handler(request):\n    return respond(request)"
    hits2 = [_hit("unrelated"), _hit("   1→def handler(request):\n   2→    return respond(request)")]
    assert exact_first(quote, hits2)[0] is hits2[1]


def test_a_dotted_name_in_a_json_escaped_tool_input_is_a_term_of_its_own():
    """A tool call's input is stored as JSON: ``"…\\n.DS_Store\\nThumbs.db"``. The escape separates words
    (not ``n.ds_store``), so a search for the name finds the Write that holds it."""
    import orjson

    from contextwarden.memory.lexical import LexicalIndex
    from contextwarden.memory.words import tokenize
    from tests.support.memstore import item

    write = "Write " + orjson.dumps({"file_path": "/repo/.gitignore", "content": "# macOS\n.DS_Store\nThumbs.db\n\tdef x"}).decode()
    toks = set(tokenize(write))
    assert {"ds_store", "thumbs.db"} <= toks and not {"n.ds_store", "nthumbs.db", "tdef"} & toks
    assert "new_dir" in tokenize("C:\\\\new_dir")  # an escaped backslash stays one: the word after it is whole
    read = "     1\t# macOS\n     2\t.DS_Store\n     3\t.DS_Store?\n     4\t._*\n     5\t.Spotlight-V100\n"
    idx = LexicalIndex()
    idx.add([item(write, turn=0), item(read, turn=1)]
            + [item(f"stored a data store of size {i}; DS meeting notes in /repo/{i}/.DS_Store_old", turn=i + 2) for i in range(20)])
    assert {h.item.text for h in idx.query("DS_Store", ["t-a"], n=2)} == {write, read}
