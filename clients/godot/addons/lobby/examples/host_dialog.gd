extends Control
## Host Game dialog: a name, max players (2-16), an optional password, the room's
## description (mode and map attributes) and Unlisted (friends join with the code
## the waiting room shows).
## Emits hosted(session) once the lobby created the session, this player its host.

signal hosted(session: Dictionary)

## By path, not class_name: see session_manager.gd.
const LobbyRequestScript := preload("../lobby_request.gd")

## The SessionManager to use; default /root/SessionManager (set it before the scene
## enters the tree to use another).
var session_manager: Node = null

@onready var _name_edit: LineEdit = $Box/NameEdit
@onready var _max_players: SpinBox = $Box/MaxPlayers
@onready var _password_edit: LineEdit = $Box/PasswordEdit
@onready var _mode_edit: LineEdit = $Box/ModeEdit
@onready var _map_edit: LineEdit = $Box/MapEdit
@onready var _unlisted_check: CheckBox = $Box/UnlistedCheck
@onready var _all_ready_check: CheckBox = $Box/AllReadyCheck
@onready var _min_players: SpinBox = $Box/MinPlayers
@onready var _host_button: Button = $Box/HostButton
@onready var _error_label: Label = $Box/ErrorLabel


func _ready() -> void:
	if session_manager == null:
		session_manager = get_node_or_null("/root/SessionManager")
	_error_label.text = ""
	_host_button.pressed.connect(_on_host_pressed)
	_name_edit.text_submitted.connect(_on_text_submitted)
	_password_edit.text_submitted.connect(_on_text_submitted)


func _on_text_submitted(_text: String) -> void:
	_on_host_pressed()


func _on_host_pressed() -> void:
	if session_manager == null:
		_error_label.text = "No SessionManager: enable the Lobby plugin."
		return
	if _host_button.disabled:
		return
	_error_label.text = ""
	_host_button.disabled = true
	var attributes := {}
	if _mode_edit.text.strip_edges() != "":
		attributes["mode"] = _mode_edit.text.strip_edges()
	if _map_edit.text.strip_edges() != "":
		attributes["map"] = _map_edit.text.strip_edges()
	var visibility := "unlisted" if _unlisted_check.button_pressed else "public"
	var rule := "all_ready" if _all_ready_check.button_pressed else ""
	var needed := int(_min_players.value)
	var req: LobbyRequestScript = session_manager.create_session(
		_name_edit.text.strip_edges(), int(_max_players.value), _password_edit.text,
		attributes, visibility, rule, needed if needed > 1 else 0
	)
	req.completed.connect(_on_host_reply)


func _on_host_reply(reply: Dictionary) -> void:
	_host_button.disabled = false
	if reply.get("ok", false) != true:
		_error_label.text = "Could not host: " + _describe(reply)
		return
	var created: Variant = reply.get("session")
	hosted.emit(created if created is Dictionary else {})


static func _describe(reply: Dictionary) -> String:
	var raw: Variant = reply.get("error")
	var error: Dictionary = raw if raw is Dictionary else {}
	return "%s (%s)" % [str(error.get("message", "")), str(error.get("code", ""))]
