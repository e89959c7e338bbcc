"""`lobby client URL`: an interactive terminal client for debugging a lobby.

Friendlier than wscat: commands instead of JSON (`create "Friday" 4`, `list`,
`join SESSION_ID`, `start`), tab completion (commands, session ids from the last
`list`, player ids of the session), events printed as they arrive, the session kept
up to date, resume after a dropped socket. `--script FILE` runs a file of the same
commands (with `wait EVENT` to wait for a push) and stops at the first failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from lobby import messages as m
from lobby.client import LobbyClient, RequestError, connect

HELP = """commands:
  create [NAME] [MAX_PLAYERS] [PASSWORD]   host a session        e.g. create "Friday" 4
  list [LIMIT] [CURSOR]                    open sessions (then: join <TAB>)
  join SESSION_ID|CODE [PASSWORD]          join one, by id or by a member's join code
  leave                                    leave your session
  kick PLAYER_ID                           host: remove a player (kick <TAB>)
  promote PLAYER_ID                        host: make another member the host
  start                                    host: start the match
  ticket                                   your join ticket for the game server
  ping                                     round trip
  session                                  the session as this client mirrors it
  me                                       your player id, name and resume token
  send TYPE [JSON_FIELDS]                  any request, e.g. send ping {}
  wait EVENT [SECONDS]                     wait for the next EVENT (scripts)
  help, quit"""

COMMANDS = ("create", "list", "join", "leave", "kick", "promote", "start", "ticket", "ping",
            "session", "me", "send", "wait", "help", "quit", "exit")


def describe_session(s: m.Session) -> str:
    names = ", ".join(p.name for p in s.players)
    lock = " locked" if s.has_password else ""
    where = f" at {s.server_endpoint}" if s.server_endpoint else ""
    code = getattr(s, "join_code", None)
    return (f'{s.session_id} "{s.name}" {s.session_state} {s.player_count}/{s.max_players}'
            f"{lock}{where} [{names}]" + (f" code {code}" if code else ""))


def describe_event(event: Any) -> str:
    fields = event.model_dump(exclude={"type", "session_id", "session"}, exclude_none=True)
    detail = " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                      for k, v in fields.items())
    session = getattr(event, "session", None)
    tail = f"  -> {describe_session(session)}" if isinstance(session, m.Session) else ""
    return f"* {event.type} {detail}{tail}".rstrip()


class Terminal:
    def __init__(self, lobby: LobbyClient, out: Callable[[str], None]) -> None:
        self.lobby = lobby
        self.out = out
        self.listed: list[str] = []
        self.handlers: dict[str, Callable[[list[str]], Awaitable[None]]] = {
            "create": self.create, "list": self.list, "join": self.join, "leave": self.leave,
            "kick": self.kick, "promote": self.promote, "start": self.start,
            "ticket": self.ticket, "ping": self.ping,
            "session": self.session, "me": self.me, "send": self.send, "wait": self.wait,
            "help": self.help,
        }

    async def run(self, line: str) -> bool:
        """Run one command line; False when it failed."""
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            self.out(f"error: {exc}")
            return False
        if not words:
            return True
        handler = self.handlers.get(words[0])
        if handler is None:
            self.out(f"error: unknown command {words[0]!r} (help lists them)")
            return False
        try:
            await handler(words[1:])
        except RequestError as exc:
            self.out(f"error {exc.code}: {exc.message}")
            return False
        except (ValueError, IndexError, TimeoutError) as exc:
            self.out(f"error: {exc or 'timed out'}")
            return False
        return True

    async def create(self, args: list[str]) -> None:
        name = args[0] if args else None
        max_players = int(args[1]) if len(args) > 1 else None
        password = args[2] if len(args) > 2 else None
        s = await self.lobby.create_session(name, max_players, password)
        self.out(f"created {describe_session(s)}")

    async def list(self, args: list[str]) -> None:
        page = await self.lobby.list_sessions(int(args[0]) if args else None,
                                              args[1] if len(args) > 1 else None)
        self.listed = [s.session_id for s in page.sessions]
        self.out(f"{len(page.sessions)} open session(s)")
        for s in page.sessions:
            self.out(f"  {describe_session(s)}")
        if page.next_cursor:
            self.out(f"  more: list {len(page.sessions)} {page.next_cursor}")

    async def join(self, args: list[str]) -> None:
        target, password = args[0], (args[1] if len(args) > 1 else None)
        # Join codes are 6 characters (dashes and spaces ignored); session ids are longer.
        if len(target.replace("-", "").replace(" ", "")) == 6:
            s = await self.lobby.join_session(join_code=target, password=password)
        else:
            s = await self.lobby.join_session(target, password)
        self.out(f"joined {describe_session(s)}")

    async def leave(self, args: list[str]) -> None:
        await self.lobby.leave_session()
        self.out("left the session")

    async def kick(self, args: list[str]) -> None:
        await self.lobby.kick_player(args[0])
        self.out(f"kicked {args[0]}")

    async def promote(self, args: list[str]) -> None:
        await self.lobby.promote_player(args[0])
        self.out(f"promoted {args[0]}")

    async def start(self, args: list[str]) -> None:
        s = await self.lobby.start_session()
        self.out(f"started {describe_session(s)}")

    async def ticket(self, args: list[str]) -> None:
        t = await self.lobby.join_ticket()
        self.out(f"ticket {t.ticket} for {t.server_endpoint}, expires at {t.expires_at}")

    async def ping(self, args: list[str]) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        await self.lobby.ping()
        self.out(f"pong in {(loop.time() - began) * 1000:.1f} ms")

    async def session(self, args: list[str]) -> None:
        s = self.lobby.session
        self.out(describe_session(s) if s is not None else "in no session")

    async def me(self, args: list[str]) -> None:
        lobby = self.lobby
        self.out(f"{lobby.name} {lobby.player_id} resume_token={lobby.resume_token} "
                 f"({lobby.state})")

    async def send(self, args: list[str]) -> None:
        fields = json.loads(" ".join(args[1:])) if len(args) > 1 else {}
        if not isinstance(fields, dict):
            raise ValueError("the fields must be a JSON object")
        reply = await self.lobby.request(args[0], **fields)
        self.out(json.dumps(reply, ensure_ascii=False))

    async def wait(self, args: list[str]) -> None:
        seconds = float(args[1]) if len(args) > 1 else self.lobby.timeout
        try:
            await self.lobby.next_event(args[0], timeout=seconds)
        except TimeoutError:
            raise TimeoutError(f"no {args[0]} within {seconds:g} s") from None

    async def help(self, args: list[str]) -> None:
        self.out(HELP)

    def complete(self, line: str, text: str) -> list[str]:
        """Completions of the word `text` at the end of `line` (readline's view)."""
        words = line.split()
        if not words or (len(words) == 1 and not line.endswith(" ")):
            return [c + " " for c in COMMANDS if c.startswith(text)]
        cmd = words[0]
        options: list[str] = []
        if cmd == "join":
            options = self.listed
        elif cmd in ("kick", "promote") and self.lobby.session is not None:
            options = [p.player_id for p in self.lobby.session.players
                       if p.player_id != self.lobby.player_id]
        elif cmd == "wait":
            options = list(m.EVENTS)
        elif cmd == "send":
            from lobby.protocol import REQUEST_TYPES

            options = list(REQUEST_TYPES)
        return [o + " " for o in options if o.startswith(text)]


async def _interactive(term: Terminal, prompt: str, reading: list[bool]) -> int:
    import readline

    def completer(text: str, state: int) -> str | None:
        options = term.complete(readline.get_line_buffer()[: readline.get_endidx()], text)
        return options[state] if state < len(options) else None

    readline.set_completer(completer)
    readline.set_completer_delims(" \t")
    readline.parse_and_bind("tab: complete")
    loop = asyncio.get_running_loop()
    while True:
        reading[0] = True
        try:
            line = await loop.run_in_executor(None, input, prompt)
        except (EOFError, KeyboardInterrupt):
            reading[0] = False
            term.out("")
            return 0
        reading[0] = False
        if line.strip() in ("quit", "exit"):
            return 0
        await term.run(line)


async def _run(args: argparse.Namespace) -> int:
    interactive = args.script is None and sys.stdin.isatty()
    prompt = "lobby> " if interactive else ""

    reading = [False]  # True while input() waits: only then is there a prompt to redraw

    def out(text: str) -> None:
        if interactive and reading[0]:
            # An event printed while the user types: clear the line, print, redraw.
            import readline

            sys.stdout.write(f"\r\x1b[K{text}\n{prompt}{readline.get_line_buffer()}")
        else:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()

    try:
        lobby = await connect(args.url, name=args.name, token=args.token,
                              resume_token=args.resume_token, timeout=args.timeout)
    except (OSError, RequestError, TimeoutError) as exc:
        print(f"lobby client: cannot connect to {args.url}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # websockets' handshake errors
        print(f"lobby client: cannot connect to {args.url}: {exc}", file=sys.stderr)
        return 1
    term = Terminal(lobby, out)
    lobby.on("*", lambda ev: out(describe_event(ev)))
    lobby.on("reconnecting", lambda n: out(f"! connection lost, reconnecting (attempt {n})"))
    lobby.on("reconnected", lambda resumed: out(
        f"! reconnected ({'resumed' if resumed else 'as a new player'})"))
    lobby.on("disconnected", lambda code: out(f"! disconnected (close code {code})"))
    out(f"connected to {args.url} as {lobby.name} ({lobby.player_id})"
        + (f", in {describe_session(lobby.session)}" if lobby.session else ""))
    try:
        if interactive:
            out("type help for the commands; TAB completes")
            return await _interactive(term, prompt, reading)
        for line in args.lines:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line.strip() in ("quit", "exit"):
                break
            out(f"> {line.strip()}")
            if not await term.run(line):
                return 1
        return 0
    finally:
        await lobby.close()


def add_parser(sub: Any) -> None:
    p = sub.add_parser("client", help="interactive terminal client (debugging, scripts)")
    p.add_argument("url", help="the lobby's WebSocket, e.g. ws://localhost:8080/ws")
    p.add_argument("--name", default=None, help="display name (default: the server's)")
    p.add_argument("--token", default=None, help="auth token sent in hello")
    p.add_argument("--resume-token", default=None, help="be that player again")
    p.add_argument("--script", default=None,
                   help="run the commands of FILE (one a line) and exit: 1 at a failure")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")


def main(args: argparse.Namespace) -> int:
    if args.script is not None:
        try:
            args.lines = Path(args.script).read_text("utf-8").splitlines()
        except OSError as exc:
            print(f"lobby client: cannot read {args.script}: {exc}", file=sys.stderr)
            return 2
    elif not sys.stdin.isatty():
        args.lines = sys.stdin.read().splitlines()
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130
