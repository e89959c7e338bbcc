extends Control
## Browse Games: one page of open games at a time (Refresh: the first page, Next
## page: the following one). A game with a password is shown with "[locked] " and
## asks for the password before joining. Mode and Map filter the list (fullest
## games first); "Join by code" joins a friend's game, listed or not. Emits
## joined(session) once in the game.

signal joined(session: Dictionary)

## By path, not class_name: see session_manager.gd.
const LobbyRequestScript := preload("../lobby_request.gd")

const LOCK_PREFIX := "[locked] "

## The SessionManager to use; default /root/SessionManager (set it before the scene
## enters the tree to use another).
var session_manager: Node = null
## Sessions per page (the lobby allows 1 to 100).
var page_size := 20

var _next_cursor := ""
## session_id -> whether it needs a password, for the sessions on the list.
var _locked := {}
var _busy := false

@onready var _refresh_button: Button = $Box/Buttons/RefreshButton
@onready var _next_page_button: Button = $Box/Buttons/NextPageButton
@onready var _session_list: ItemList = $Box/SessionList
@onready var _password_edit: LineEdit = $Box/PasswordEdit
@onready var _join_button: Button = $Box/JoinButton
@onready var _mode_filter: LineEdit = $Box/Filters/ModeFilter
@onready var _map_filter: LineEdit = $Box/Filters/MapFilter
@onready var _code_edit: LineEdit = $Box/CodeBox/CodeEdit
@onready var _join_code_button: Button = $Box/CodeBox/JoinCodeButton
@onready var _error_label: Label = $Box/ErrorLabel


func _ready() -> void:
	if session_manager == null:
		session_manager = get_node_or_null("/root/SessionManager")
	_error_label.text = ""
	_next_page_button.disabled = true
	_refresh_button.pressed.connect(refresh)
	_next_page_button.pressed.connect(_on_next_page_pressed)
	_join_button.pressed.connect(_on_join_pressed)
	_session_list.item_activated.connect(_join)
	_session_list.item_selected.connect(_on_item_selected)
	_join_code_button.pressed.connect(_on_join_code_pressed)
	if session_manager != null and session_manager.player_id != "":
		_load_page("")


## Loads the first page (the Refresh button).
func refresh() -> void:
	_load_page("")


func _on_next_page_pressed() -> void:
	if _next_cursor != "":
		_load_page(_next_cursor)


func _load_page(cursor: String) -> void:
	if session_manager == null:
		_error_label.text = "No SessionManager: enable the Lobby plugin."
		return
	_error_label.text = ""
	_set_busy(true)
	var req: LobbyRequestScript = session_manager.list_sessions(page_size, cursor, _search())
	req.completed.connect(_on_page)


## The filter fields as list_sessions search fields (empty fields filter nothing).
func _search() -> Dictionary:
	var wanted := {}
	if _mode_filter.text.strip_edges() != "":
		wanted["mode"] = _mode_filter.text.strip_edges()
	if _map_filter.text.strip_edges() != "":
		wanted["map"] = _map_filter.text.strip_edges()
	if wanted.is_empty():
		return {}
	return {"filter": wanted, "sort": "most_players"}


func _on_join_code_pressed() -> void:
	if _busy or session_manager == null:
		return
	_error_label.text = ""
	_set_busy(true)
	var req: LobbyRequestScript = session_manager.join_by_code(
		_code_edit.text, _password_edit.text)
	req.completed.connect(_on_join_reply)


func _on_page(reply: Dictionary) -> void:
	_set_busy(false)
	if reply.get("ok", false) != true:
		_error_label.text = "Could not list games: " + _describe(reply)
		return
	_session_list.clear()
	_locked.clear()
	var sessions: Variant = reply.get("sessions")
	if sessions is Array:
		for entry in sessions:
			if entry is Dictionary:
				_add_line(entry)
	var cursor: Variant = reply.get("next_cursor")
	_next_cursor = "" if cursor == null else str(cursor)
	_next_page_button.disabled = _next_cursor == ""
	if _session_list.item_count == 0:
		_error_label.text = "No open games right now: refresh, or host one."


func _add_line(entry: Dictionary) -> void:
	var session_id := str(entry.get("session_id", ""))
	var locked: bool = entry.get("has_password", false) == true
	var line := "%s  (%d/%d)" % [
		str(entry.get("name", "")), _count(entry.get("player_count")),
		_count(entry.get("max_players"))
	]
	if locked:
		line = LOCK_PREFIX + line
	var index := _session_list.add_item(line)
	_session_list.set_item_metadata(index, session_id)
	_locked[session_id] = locked


func _on_item_selected(index: int) -> void:
	var session_id := str(_session_list.get_item_metadata(index))
	if _locked.get(session_id, false):
		_password_edit.placeholder_text = "Password for this game"
		_password_edit.grab_focus()


func _on_join_pressed() -> void:
	var selected := _session_list.get_selected_items()
	if selected.is_empty():
		_error_label.text = "Pick a game first."
		return
	_join(selected[0])


func _join(index: int) -> void:
	if _busy or session_manager == null:
		return
	var session_id := str(_session_list.get_item_metadata(index))
	var password := _password_edit.text
	if _locked.get(session_id, false) and password == "":
		_error_label.text = "This game has a password: type it, then Join."
		_password_edit.grab_focus()
		return
	_error_label.text = ""
	_set_busy(true)
	var req: LobbyRequestScript = session_manager.join_session(session_id, password)
	req.completed.connect(_on_join_reply)


func _on_join_reply(reply: Dictionary) -> void:
	_set_busy(false)
	if reply.get("ok", false) == true:
		_password_edit.text = ""
		var session: Variant = reply.get("session")
		joined.emit(session if session is Dictionary else {})
		return
	var raw: Variant = reply.get("error")
	var code := str(raw.get("code", "")) if raw is Dictionary else ""
	if code == "WRONG_PASSWORD":
		_error_label.text = "Wrong password."
		_password_edit.grab_focus()
		return
	_error_label.text = "Could not join: " + _describe(reply)
	if code in ["SESSION_FULL", "SESSION_NOT_FOUND", "SESSION_NOT_WAITING"]:
		_load_page("")  # the list is out of date
		_error_label.text = "Could not join: " + _describe(reply)


func _set_busy(busy: bool) -> void:
	_busy = busy
	_refresh_button.disabled = busy
	_join_button.disabled = busy
	_next_page_button.disabled = busy or _next_cursor == ""


static func _count(value: Variant) -> int:
	if value is int or value is float:
		return int(value)
	return 0


static func _describe(reply: Dictionary) -> String:
	var raw: Variant = reply.get("error")
	var error: Dictionary = raw if raw is Dictionary else {}
	return "%s (%s)" % [str(error.get("message", "")), str(error.get("code", ""))]
