"""Display names (players and sessions) cannot hide or disguise text, and are NFC."""

from __future__ import annotations

import json

import pytest

from lobby import protocol as p

FORBIDDEN = [
    ("\u0085", "Cc: NEXT LINE, the C1 control protocol.md always forbade"),
    ("\u0000", "Cc: NUL"),
    ("\u007f", "Cc: DELETE"),
    ("\u202e", "Cf: RIGHT-TO-LEFT OVERRIDE"),
    ("\u2066", "Cf: LEFT-TO-RIGHT ISOLATE"),
    ("\u200b", "Cf: ZERO WIDTH SPACE"),
    ("\u200d", "Cf: ZERO WIDTH JOINER"),
    ("\ufeff", "Cf: BYTE ORDER MARK"),
    ("\u2028", "Zl: LINE SEPARATOR"),
    ("\u2029", "Zp: PARAGRAPH SEPARATOR"),
]
BLANK = [" ", "   ", "\u3000", "\u00a0\u2003", "\u0301", "\u0301\u0302\u0303", " \u0301 ",
         "\u3164", "\u2800\u2800"]


def _parse(rtype: str, name: str) -> p.Request:
    return p.parse_request(json.dumps({"type": rtype, "id": 1, "name": name}))


@pytest.mark.parametrize("rtype", ["hello", "create_session"])
@pytest.mark.parametrize(("char", "what"), FORBIDDEN)
def test_forbidden_category_refused(rtype: str, char: str, what: str) -> None:
    for name in (f"ali{char}ce", char, f"{char}bob"):
        with pytest.raises(p.BadFrame) as bad:
            _parse(rtype, name)
        reply = bad.value.reply
        assert reply["error"]["code"] == "BAD_REQUEST", what
        assert reply["type"] == rtype and reply["id"] == 1
        assert f"U+{ord(char):04X}" in reply["error"]["message"], reply


@pytest.mark.parametrize("rtype", ["hello", "create_session"])
@pytest.mark.parametrize("name", BLANK)
def test_nothing_visible_refused(rtype: str, name: str) -> None:
    with pytest.raises(p.BadFrame) as bad:
        _parse(rtype, name)
    assert "visible" in bad.value.reply["error"]["message"]


@pytest.mark.parametrize("rtype", ["hello", "create_session"])
def test_nfc_applied_and_limit_counted_after_it(rtype: str) -> None:
    req = _parse(rtype, "Cafe\u0301")
    assert req.name == "Caf\u00e9"  # type: ignore[union-attr]
    # 128 code points that compose to 64: allowed; 65 composed: refused.
    assert _parse(rtype, "e\u0301" * 64).name == "\u00e9" * 64  # type: ignore[union-attr]
    with pytest.raises(p.BadFrame) as bad:
        _parse(rtype, "e\u0301" * 65)
    assert "64" in bad.value.reply["error"]["message"]


@pytest.mark.parametrize("name", ["alice", "Zoë", "東京の夜", "d\u00e9j\u00e0 vu", "🎮 gamer",
                                  "עברית", "a b", "x" * 64, "क्षि"])
def test_ordinary_names_accepted(name: str) -> None:
    assert _parse("hello", name).name == name  # type: ignore[union-attr]


async def test_names_over_the_socket(make_node, connect_player) -> None:
    node = await make_node()
    alice = await connect_player(node, None)
    assert (await alice.hello("Ame\u0301lie"))["name"] == "Am\u00e9lie"
    reply = await alice.error("create_session", "BAD_REQUEST", name="evil\u202egnp.exe")
    assert "U+202E" in reply["error"]["message"]
    session = (await alice.ok("create_session", name="Cre\u0300me"))["session"]
    assert session["name"] == "Cr\u00e8me"
    assert session["players"][0]["name"] == "Am\u00e9lie"
    bob = await connect_player(node, None)
    await bob.error("hello", "BAD_REQUEST", name="\u200b\u200b")
    await bob.hello("bob")  # the refused hello left the socket usable
