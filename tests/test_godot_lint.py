"""The Godot addons parse and lint clean, and keep to clients/godot/API.md.

Godot 4 cannot run here, so its edition (clients/godot) is checked statically:
gdtoolkit's gdparse and gdlint on every .gd file of both editions (clients/godot and,
once it exists, clients/godot3), a scan of the Godot 4 edition for Godot 3 calls that
gdtoolkit accepts (yield(, three-argument connect(, JSON.print, WebSocketClient, ...),
the API of API.md defined in each edition's files, and the example scenes holding the
nodes their scripts and API.md name.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = ROOT / "clients"
GODOT4 = CLIENTS / "godot"
GODOT3 = CLIENTS / "godot3"
EDITIONS = [GODOT4, GODOT3]
ADDON = Path("addons") / "lobby"
API_DOC = GODOT4 / "API.md"
# gdtoolkit's scripts live beside the python that runs the tests (.venv/bin).
TOOLS = Path(sys.executable).parent


def gd_files(edition: Path) -> list[Path]:
    return sorted(edition.rglob("*.gd")) if edition.is_dir() else []


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_godot4_addon_is_there() -> None:
    assert (GODOT4 / ADDON / "session_manager.gd").is_file()
    assert (GODOT4 / ADDON / "plugin.cfg").is_file()


@pytest.mark.parametrize("tool", ["gdparse", "gdlint"])
def test_gdtoolkit_accepts_every_script(tool: str) -> None:
    exe = TOOLS / tool
    assert exe.is_file(), f"{exe} is missing: pip install -e '.[test]' installs gdtoolkit"
    files = gd_files(GODOT4) + gd_files(GODOT3)
    assert files
    # cwd=clients/: gdlint reads its settings from a gdlintrc there or in a parent.
    run = subprocess.run(
        [str(exe), *(f.relative_to(CLIENTS).as_posix() for f in files)],
        cwd=CLIENTS,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, f"{tool} (in clients/) failed:\n{run.stdout}{run.stderr}"


# --- no Godot 3 calls in the Godot 4 edition ------------------------------------

# One argument of a call: no top-level comma; strings and (two levels of) brackets whole.
_ARG = r"""(?:[^,()\[\]{}"']|"[^"\n]*"|'[^'\n]*'|\((?:[^()]|\([^()]*\))*\)|\[[^\[\]]*\])+"""
# Godot 3's connect(signal, target, "method"[, binds, flags]): the method is a string,
# the third argument. Godot 4's is connect(signal, callable[, flags]), never a string.
THREE_ARGUMENT_CONNECT = re.compile(
    r"\b(?:connect|disconnect|is_connected)\s*\(\s*"
    r"""(?:&?"[^"\n]*"|&?'[^'\n]*'|[A-Za-z_][\w.]*)\s*,"""
    rf"\s*{_ARG},\s*[\"']"
)
GODOT3_CALLS = {
    "yield(": re.compile(r"\byield\s*\("),
    "three-argument connect(": THREE_ARGUMENT_CONNECT,
    "JSON.print": re.compile(r"\bJSON\.print\b"),
    "JSON.parse(": re.compile(r"\bJSON\.parse\s*\("),
    "WebSocketClient": re.compile(r"\bWebSocketClient\b"),
    "NetworkedMultiplayerENet": re.compile(r"\bNetworkedMultiplayerENet\b"),
    "Pool*Array": re.compile(r"\bPool(?:Byte|Int|Real|String|Vector2|Vector3|Color)Array\b"),
    "Reference as base class": re.compile(r"^[ \t]*(?:class\s+\w+\s+)?extends\s+Reference\b", re.M),
    "get_tree().network_peer": re.compile(r"\bnetwork_peer\b"),
    "OS.get_unix_time(": re.compile(r"\bOS\.get_unix_time\s*\("),
    ".to_utf8()": re.compile(r"\.to_utf8\s*\(\s*\)"),
    "rand_range(": re.compile(r"\brand_range\s*\("),
}


def strip_comments(source: str) -> str:
    """The source without its # comments (and ## docs); strings are kept as they are."""
    out: list[str] = []
    i, n = 0, len(source)
    quote = ""
    while i < n:
        c = source[i]
        if quote:
            if c == "\\":
                out.append(source[i : i + 2])
                i += 2
                continue
            if source.startswith(quote, i):
                out.append(quote)
                i += len(quote)
                quote = ""
                continue
            out.append(c)
        elif c in "\"'":
            quote = c * 3 if source.startswith(c * 3, i) else c
            out.append(quote)
            i += len(quote)
            continue
        elif c == "#":
            while i < n and source[i] != "\n":
                i += 1
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def godot3_calls(source: str) -> list[str]:
    code = strip_comments(source)
    found = []
    for what, pattern in GODOT3_CALLS.items():
        for m in pattern.finditer(code):
            line = code.count("\n", 0, m.start()) + 1
            found.append(f"line {line}: {what}: {m.group(0).strip()!r}")
    return found


@pytest.mark.parametrize(
    "source",
    [
        'button.connect("pressed", self, "_on_pressed")',
        'connect("timeout", self, "_on_timeout", [1, 2])',
        "ws.connect('data_received', self, '_on_data')",
        'get_tree().connect("network_peer_connected", self, "_peer", [], CONNECT_ONESHOT)',
        '$Timer.connect("timeout", get_node("Box/X"), "_tick")',
        'connect(\n\t"pressed",\n\tself,\n\t"_on_pressed"\n)',
        'b.disconnect("pressed", self, "_on_pressed")',
        'if is_connected("pressed", self, "_on_pressed"):',
        'x.connect(SIGNAL_NAME, self, "_on_it")',
        "var r = yield(get_tree(), 'idle_frame')",
        "var text = JSON.print(data)",
        "var parsed = JSON.parse(text)",
        "var ws = WebSocketClient.new()",
        "var p := NetworkedMultiplayerENet.new()",
        "var b: PoolByteArray",
        "extends Reference",
        "class Inner extends Reference:",
        "get_tree().network_peer = peer",
        "var key = secret.to_utf8()",
    ],
)
def test_godot3_scan_finds(source: str) -> None:
    assert godot3_calls(source), source


@pytest.mark.parametrize(
    "source",
    [
        "button.pressed.connect(_on_pressed)",
        'connect("pressed", _on_pressed)',
        "manager.connect(signal_name, callback)",
        'connect("timeout", _on_timeout.bind("a", "b"), CONNECT_ONE_SHOT)',
        'timer.timeout.connect(func(): print("a", "b"))',
        'sig.connect(Callable(self, "_on_it"))',
        "req.completed.connect(_on_ticket.bind(_serial))",
        'if manager.is_connected(signal_name, callback):',
        "# Godot 3: yield(SessionManager.ping(), \"completed\") and JSON.print",
        'var hint := "no # comment here"  # but JSON.print(x) here',
        "var mac := key.to_utf8_buffer()",
        "extends RefCounted",
        "delay *= randf_range(0.5, 1.0)",
        "var bytes: PackedByteArray",
    ],
)
def test_godot3_scan_passes(source: str) -> None:
    assert godot3_calls(source) == []


@pytest.mark.parametrize("path", gd_files(GODOT4), ids=rel)
def test_godot4_edition_has_no_godot3_calls(path: Path) -> None:
    found = godot3_calls(path.read_text("utf-8"))
    assert not found, f"{rel(path)} holds Godot 3 calls:\n" + "\n".join(found)


# --- the API of API.md ----------------------------------------------------------

API_TEXT = API_DOC.read_text("utf-8")
SECTION_FILES = {
    "LobbyRequest": "lobby_request.gd",
    "SessionManager": "session_manager.gd",
    "MultiplayerManager": "multiplayer_manager.gd",
    "LobbyGameServer": "lobby_game_server.gd",
}


def arity(params: str | None) -> int:
    return 0 if not params or not params.strip() else len(params.split(","))


def api_members() -> list[tuple[str, str, str, int]]:
    """(file, kind, name, arity) for each func, signal and var line of API.md's blocks."""
    members = []
    headings = list(re.finditer(r"^## (\w+)", API_TEXT, re.M))
    for i, heading in enumerate(headings):
        file = SECTION_FILES.get(heading.group(1))
        if file is None:
            continue
        end = headings[i + 1].start() if i + 1 < len(headings) else len(API_TEXT)
        body = API_TEXT[heading.end() : end]
        for block in re.findall(r"^```\n(.*?)^```", body, re.M | re.S):
            for line in block.splitlines():
                if m := re.match(r"(?:static\s+)?func\s+(\w+)\s*\(([^)]*)\)", line):
                    members.append((file, "func", m.group(1), arity(m.group(2))))
                elif m := re.match(r"signal\s+(\w+)\s*(?:\(([^)]*)\))?", line):
                    members.append((file, "signal", m.group(1), arity(m.group(2))))
                elif m := re.match(r"var\s+(\w+)", line):
                    members.append((file, "var", m.group(1), 0))
    # The Files table names LobbyTicket's one function.
    m = re.search(r"`static func verify\(([^)]*)\)", API_TEXT)
    assert m, "API.md no longer names LobbyTicket.verify"
    members.append(("lobby_ticket.gd", "func", "verify", arity(m.group(1))))
    return members


API_MEMBERS = api_members()


def test_api_doc_parses() -> None:
    files = {file for file, *_ in API_MEMBERS}
    assert files == {*SECTION_FILES.values(), "lobby_ticket.gd"}
    names = {name for _, _, name, _ in API_MEMBERS}
    assert {"hello", "join_ticket", "session_changed", "parse_endpoint", "serve"} <= names
    assert len(API_MEMBERS) > 80


def defined(source: str, kind: str, name: str) -> tuple[bool, int | None]:
    """Whether `source` defines `name` at its top level, and with how many parameters."""
    if kind == "func":
        m = re.search(rf"^(?:static\s+)?func\s+{name}\s*\(([^)]*)\)", source, re.M)
    elif kind == "signal":
        m = re.search(rf"^signal\s+{name}\b(?:\s*\(([^)]*)\))?", source, re.M)
    else:
        annotations = r"(?:@\w+(?:\([^)]*\))?\s+)*(?:export(?:\([^)]*\))?\s+|onready\s+)?"
        m = re.search(rf"^{annotations}var\s+{name}\b", source, re.M)
        return bool(m), None
    return bool(m), arity(m.group(1)) if m else None


@pytest.mark.parametrize(
    ("file", "kind", "name", "count"),
    API_MEMBERS,
    ids=[f"{file}:{kind}:{name}" for file, kind, name, _ in API_MEMBERS],
)
def test_editions_define_the_api(file: str, kind: str, name: str, count: int) -> None:
    checked = 0
    for edition in EDITIONS:
        path = edition / ADDON / file
        if edition is GODOT3 and not path.is_file():
            continue  # the Godot 3 edition is checked file by file as it appears
        assert path.is_file(), f"{rel(path)} is missing"
        found, params = defined(strip_comments(path.read_text("utf-8")), kind, name)
        assert found, f"{rel(path)} does not define {kind} {name} (API.md)"
        if params is not None:
            assert params == count, f"{rel(path)}: {kind} {name} takes {params}, API.md {count}"
        checked += 1
    assert checked >= 1


CLASS_NAMES = re.findall(r"^\| `(\w+\.gd)` \| `class_name (\w+)`", API_TEXT, re.M)
AUTOLOADS = re.findall(r"^\| `(\w+\.gd)` \| autoload `(\w+)`", API_TEXT, re.M)


def test_class_names_and_autoloads() -> None:
    assert ("lobby_request.gd", "LobbyRequest") in CLASS_NAMES
    assert ("session_manager.gd", "SessionManager") in AUTOLOADS
    for edition in EDITIONS:
        for file, name in CLASS_NAMES:
            path = edition / ADDON / file
            if path.is_file():
                assert re.search(rf"^class_name\s+{name}\b", path.read_text("utf-8"), re.M), (
                    f"{rel(path)} lacks class_name {name}"
                )
        for file, name in AUTOLOADS:
            path = edition / ADDON / file
            if path.is_file():
                # A script with the autoload's own name as class_name cannot be that autoload.
                assert not re.search(rf"^class_name\s+{name}\b", path.read_text("utf-8"), re.M)


def test_plugin_registers_the_autoloads() -> None:
    cfg = (GODOT4 / ADDON / "plugin.cfg").read_text("utf-8")
    assert re.search(r'^script="plugin\.gd"$', cfg, re.M)
    plugin = (GODOT4 / ADDON / "plugin.gd").read_text("utf-8")
    assert plugin.startswith("@tool\nextends EditorPlugin")
    for file, name in AUTOLOADS:
        assert f'["{name}", "{file}"]' in plugin
    code = strip_comments(plugin)
    assert "add_autoload_singleton(autoload_name, path)" in code
    assert "remove_autoload_singleton(autoload_name)" in code


def test_plugin_never_overwrites_or_removes_an_autoload_it_did_not_add() -> None:
    """add_autoload_singleton replaces an existing autoload of that name and
    remove_autoload_singleton deletes whatever holds it: the plugin checks first."""
    code = strip_comments((GODOT4 / ADDON / "plugin.gd").read_text("utf-8"))
    enable = code.split("func _enable_plugin", 1)[1].split("\nfunc ", 1)[0]
    disable = code.split("func _disable_plugin", 1)[1].split("\nfunc ", 1)[0]
    # Added only when the name is free; a name held by another script is reported.
    assert re.search(r'if current == "":\s*add_autoload_singleton\(', enable)
    assert re.search(r"elif current != path:\s*push_error\(", enable)
    assert "already exists" in enable
    # Removed only when it still points at this addon's script.
    assert re.search(
        r"if _autoload_path\(autoload_name\) == base\.path_join\([^)]*\):\s*"
        r"remove_autoload_singleton\(", disable)
    assert 'ProjectSettings.has_setting(key)' in code


# --- no class_name lookups ------------------------------------------------------

ADDON_CLASS_NAMES = sorted({
    m.group(1)
    for path in gd_files(GODOT4)
    if (m := re.search(r"^class_name\s+(\w+)", path.read_text("utf-8"), re.M))
})


def test_the_addon_declares_class_names() -> None:
    assert {"LobbyRequest", "LobbyTicket", "LobbyGameServer"} <= set(ADDON_CLASS_NAMES)


@pytest.mark.parametrize("path", gd_files(GODOT4), ids=rel)
def test_godot4_scripts_reach_each_other_by_preload_not_class_name(path: Path) -> None:
    """A class_name global needs the editor's class cache (.godot/global_script_class_cache);
    a dedicated server run headless from a fresh checkout has none and fails to parse a
    script naming one. The addon's scripts use `const X := preload("x.gd")` instead."""
    code = strip_comments(path.read_text("utf-8"))
    code = re.sub(r'"(?:[^"\\\n]|\\.)*"', '""', code)  # names inside strings are text
    own = re.search(r"^class_name\s+(\w+)", code, re.M)
    used = []
    for name in ADDON_CLASS_NAMES:
        if own and own.group(1) == name:
            continue
        for m in re.finditer(rf"\b{name}\b", code):
            line = code.count("\n", 0, m.start()) + 1
            used.append(f"line {line}: {name}")
    assert not used, f"{rel(path)} looks up class_name globals (use preload):\n" + "\n".join(used)
    for m in re.finditer(r'^const\s+\w+\s*:?=\s*preload\("([^"]+)"\)', code, re.M):
        target = (path.parent / m.group(1)).resolve()
        assert target.is_file(), f"{rel(path)} preloads {m.group(1)}, which is not there"


def test_class_name_check_catches_a_lookup() -> None:
    source = "var req: LobbyRequest = sm.ping()\nLobbyTicket.verify(t, k, 0)\n"
    code = strip_comments(source)
    assert all(re.search(rf"\b{n}\b", code) for n in ("LobbyRequest", "LobbyTicket"))


# --- ints on the wire -----------------------------------------------------------


def test_godot4_sends_integral_numbers_as_ints() -> None:
    """Godot parses every JSON number as a float and JSON.stringify writes 4.0: each
    frame goes through _ints_on_wire first."""
    code = strip_comments((GODOT4 / ADDON / "session_manager.gd").read_text("utf-8"))
    sends = re.findall(r"send_text\(([^\n]*)\)", code)
    assert sends == ["JSON.stringify(_ints_on_wire(msg))"]
    body = code.split("static func _ints_on_wire", 1)[1].split("\nfunc ", 1)[0]
    assert "return int(value)" in body
    assert "_ints_on_wire(value[key])" in body and "_ints_on_wire(item)" in body


# --- example scenes -------------------------------------------------------------


def scene_nodes(tscn: str) -> set[str]:
    """Paths below the root ("Box", "Box/Buttons/StartButton", ...) of a .tscn."""
    nodes = set()
    for header in re.findall(r"^\[node ([^\]]*)\]", tscn, re.M):
        name = re.search(r'\bname="([^"]+)"', header)
        parent = re.search(r'\bparent="([^"]*)"', header)
        assert name, header
        if parent is None:
            continue  # the root
        path = parent.group(1)
        nodes.add(name.group(1) if path == "." else f"{path}/{name.group(1)}")
    return nodes


def api_scene_nodes() -> dict[str, set[str]]:
    section = API_TEXT.split("## Example scenes", 1)[1]
    scenes = {}
    for bullet in re.split(r"^- ", section, flags=re.M)[1:]:
        m = re.match(r"`(\w+\.tscn)`", bullet)
        if m:
            scenes[m.group(1)] = set(re.findall(r"`(Box(?:/\w+)*)`", bullet))
    return scenes


API_SCENES = api_scene_nodes()


def test_api_names_three_scenes() -> None:
    assert set(API_SCENES) == {"host_dialog.tscn", "browse_games.tscn", "waiting_room.tscn"}
    assert "Box/Buttons/StartButton" in API_SCENES["waiting_room.tscn"]


@pytest.mark.parametrize("scene", sorted(API_SCENES))
def test_example_scenes_hold_their_nodes(scene: str) -> None:
    checked = 0
    for edition in EDITIONS:
        tscn_path = edition / ADDON / "examples" / scene
        if edition is GODOT3 and not tscn_path.is_file():
            continue
        assert tscn_path.is_file(), f"{rel(tscn_path)} is missing"
        tscn = tscn_path.read_text("utf-8")
        header = tscn.splitlines()[0]
        assert header.startswith("[gd_scene ")
        if edition is GODOT4:
            assert "format=3" in header, f"{rel(tscn_path)}: Godot 4 scenes are format=3"
        nodes = scene_nodes(tscn)
        missing = API_SCENES[scene] - nodes
        assert not missing, f"{rel(tscn_path)} lacks the nodes {sorted(missing)} of API.md"
        # The attached script exists, and every node it reaches by path is in the scene.
        script_paths = [
            re.search(r'\bpath="res://([^"]+)"', header).group(1)
            for header in re.findall(r"^\[ext_resource ([^\]]*)\]", tscn, re.M)
            if 'type="Script"' in header
        ]
        assert script_paths == [f"{ADDON.as_posix()}/examples/{scene[:-5]}.gd"]
        script = strip_comments((edition / script_paths[0]).read_text("utf-8"))
        used = set(re.findall(r"\$((?:\w+/)*\w+)", script))
        used |= set(re.findall(r'get_node(?:_or_null)?\(\s*"([^"/][^"]*)"\s*\)', script))
        unknown = used - nodes
        assert not unknown, f"{rel(tscn_path)} lacks the nodes {sorted(unknown)} its script uses"
        checked += 1
    assert checked >= 1


def test_readme_uses_only_api_names() -> None:
    readme = (GODOT4 / "README.md").read_text("utf-8")
    for autoload, file in [("SessionManager", "session_manager.gd"),
                           ("MultiplayerManager", "multiplayer_manager.gd")]:
        known = {name for f, _, name, _ in API_MEMBERS if f == file}
        used = set(re.findall(rf"\b{autoload}\.(\w+)", readme))
        assert used, autoload
        assert used <= known, f"README.md uses {autoload}.{sorted(used - known)}, not in API.md"
