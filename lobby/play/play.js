// The /play/ demo: host, browse, waiting room and start, on lobby.js. A reload
// resumes (the resume token is in localStorage), so the room survives it.
import { connect, defaultUrl } from "./lobby.js";

const $ = (id) => document.getElementById(id);
const url = new URLSearchParams(location.search).get("lobby") || defaultUrl();
let lobby = null;

$("endpoint").textContent = url;

function log(text) {
  const line = document.createElement("div");
  line.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $("log").prepend(line);
}

function showError(err) {
  $("error").textContent = err ? (err.code ? `${err.code}: ${err.reply?.error?.message ?? err.message}` : String(err)) : "";
}

async function run(action) {
  showError(null);
  try { return await action(); } catch (err) { showError(err); return undefined; }
}

function render() {
  const online = lobby && lobby.state !== "closed";
  $("state").textContent = lobby ? lobby.state : "disconnected";
  $("me").textContent = lobby && lobby.playerId ? `you: ${lobby.name} (${lobby.playerId})` : "";
  $("me").dataset.playerId = lobby?.playerId || "";
  $("connect").hidden = !!online;
  const s = lobby?.session;
  $("lobby").hidden = !online || !!s;
  $("room").hidden = !s;
  if (!s) return;
  $("room-name").textContent = s.name;
  $("room-state").textContent = `${s.session_state} ${s.player_count}/${s.max_players}`;
  const list = $("players");
  list.replaceChildren();
  for (const p of s.players) {
    const li = document.createElement("li");
    li.dataset.playerId = p.player_id;
    li.textContent = p.name + (p.player_id === s.host_id ? " (host)" : "") + (p.player_id === lobby.playerId ? " (you)" : "");
    if (lobby.isHost() && p.player_id !== lobby.playerId && s.session_state === "WAITING") {
      const kick = document.createElement("button");
      kick.textContent = "Kick";
      kick.className = "kick";
      kick.onclick = () => run(() => lobby.kickPlayer(p.player_id));
      li.append(kick);
    }
    list.append(li);
  }
  $("start-btn").hidden = !(lobby.isHost() && s.session_state === "WAITING");
  $("server").hidden = !s.server_endpoint;
  $("server").textContent = s.server_endpoint ? `Game server: ${s.server_endpoint}` : "";
}

async function refresh() {
  const page = await run(() => lobby.listSessions(20));
  if (!page) return;
  const list = $("sessions");
  list.replaceChildren();
  for (const s of page.sessions) {
    const li = document.createElement("li");
    li.dataset.sessionId = s.session_id;
    li.textContent = `${s.name} — ${s.player_count}/${s.max_players}${s.has_password ? " (locked)" : ""}`;
    const join = document.createElement("button");
    join.textContent = "Join";
    join.className = "join";
    join.onclick = () => run(async () => {
      const password = s.has_password ? prompt("Password") || undefined : undefined;
      await lobby.joinSession(s.session_id, password);
    });
    li.append(join);
    list.append(li);
  }
  $("no-sessions").hidden = page.sessions.length > 0;
}

async function start(name) {
  lobby = await connect(url, { name: name || undefined });
  localStorage.setItem("lobby.demo.name", lobby.name);
  lobby.on("session", render);
  lobby.on("*", (ev) => { log(`${ev.type}${ev.name ? " " + ev.name : ""}${ev.reason ? " (" + ev.reason + ")" : ""}`); render(); });
  lobby.on("reconnecting", (n) => { log(`connection lost, reconnecting (${n})`); render(); });
  lobby.on("reconnected", (resumed) => { log(resumed ? "reconnected, resumed" : "reconnected as a new player"); render(); });
  lobby.on("disconnected", (code) => { log(`disconnected (${code})`); render(); });
  lobby.on("session_lost", () => log("the session ended while away"));
  log(lobby.resumed ? `resumed as ${lobby.name}` : `connected as ${lobby.name}`);
  render();
  if (!lobby.session) await refresh();
}

$("connect-btn").onclick = () => run(() => start($("name").value.trim()));
$("host-btn").onclick = () => run(() => lobby.createSession(
  $("host-name").value.trim() || undefined, Number($("host-max").value) || undefined,
  $("host-password").value || undefined));
$("refresh-btn").onclick = () => refresh();
$("start-btn").onclick = () => run(() => lobby.startSession());
$("leave-btn").onclick = () => run(async () => { await lobby.leaveSession(); await refresh(); });

$("name").value = localStorage.getItem("lobby.demo.name") || "";
// Back after a reload: the stored resume token makes it the same player.
if (localStorage.getItem("lobby.resume_token")) run(() => start($("name").value));
