# Browse Games: pages of open sessions (newest first, or filtered by mode and map
# with the fullest first), a lock on password sessions, join with a password
# prompt, and a "Join by code" box for a friend's (unlisted) room.
extends Control

signal joined(session)

const LOCK := "[locked] "

var session_manager: Node = null
# Sessions per page (the lobby allows 1 to 100).
var page_size := 20
var _next_cursor := ""
var _locked := {}


func _ready() -> void:
	if session_manager == null:
		session_manager = get_node_or_null("/root/SessionManager")
	$Box/Buttons/RefreshButton.connect("pressed", self, "refresh")
	$Box/Buttons/NextPageButton.connect("pressed", self, "_on_next_page")
	$Box/JoinButton.connect("pressed", self, "_on_join_pressed")
	$Box/SessionList.connect("item_selected", self, "_on_selected")
	$Box/CodeBox/JoinCodeButton.connect("pressed", self, "_on_join_code_pressed")


func refresh() -> void:
	_load_page("")


func _on_next_page() -> void:
	_load_page(_next_cursor)


func _load_page(cursor: String) -> void:
	$Box/ErrorLabel.text = ""
	var reply = yield(session_manager.list_sessions(page_size, cursor, _search()), "completed")
	if not reply.get("ok", false):
		$Box/ErrorLabel.text = reply["error"]["message"]
		return
	var list: ItemList = $Box/SessionList
	list.clear()
	_locked.clear()
	for s in reply["sessions"]:
		var line := "%s (%d/%d)" % [s["name"], int(s["player_count"]), int(s["max_players"])]
		if s["has_password"]:
			line = LOCK + line
			_locked[s["session_id"]] = true
		list.add_item(line)
		list.set_item_metadata(list.get_item_count() - 1, s["session_id"])
	var nxt = reply.get("next_cursor")
	_next_cursor = nxt if typeof(nxt) == TYPE_STRING else ""
	$Box/Buttons/NextPageButton.disabled = _next_cursor == ""
	$Box/PasswordEdit.visible = false


# The filter fields as list_sessions search fields (empty fields filter nothing).
func _search() -> Dictionary:
	var wanted := {}
	for field in [["mode", $Box/Filters/ModeFilter], ["map", $Box/Filters/MapFilter]]:
		var text: String = field[1].text.strip_edges()
		if text != "":
			wanted[field[0]] = text
	if wanted.empty():
		return {}
	return {"filter": wanted, "sort": "most_players"}


func _on_join_code_pressed() -> void:
	$Box/ErrorLabel.text = ""
	var reply = yield(session_manager.join_by_code($Box/CodeBox/CodeEdit.text,
			$Box/PasswordEdit.text), "completed")
	if reply.get("ok", false):
		emit_signal("joined", reply["session"])
		return
	if reply["error"]["code"] == "WRONG_PASSWORD":
		$Box/PasswordEdit.visible = true
	$Box/ErrorLabel.text = reply["error"]["message"]


func _on_selected(index: int) -> void:
	var locked := _locked.has($Box/SessionList.get_item_metadata(index))
	$Box/PasswordEdit.visible = locked
	if locked:
		$Box/PasswordEdit.grab_focus()


func _on_join_pressed() -> void:
	var selected: PoolIntArray = $Box/SessionList.get_selected_items()
	if selected.empty():
		$Box/ErrorLabel.text = "Pick a game first"
		return
	var session_id: String = $Box/SessionList.get_item_metadata(selected[0])
	var reply = yield(session_manager.join_session(session_id, $Box/PasswordEdit.text),
			"completed")
	if reply.get("ok", false):
		emit_signal("joined", reply["session"])
		return
	if reply["error"]["code"] == "WRONG_PASSWORD":
		$Box/PasswordEdit.visible = true
		$Box/PasswordEdit.grab_focus()
	$Box/ErrorLabel.text = reply["error"]["message"]
