# Host Game dialog: name, max players, optional password, the room's description
# (mode and map attributes) and whether it is listed -> create_session. An
# unlisted room is joined with the join code the waiting room shows. The start
# rule: everyone ready (all_ready) or the host's say, and the players needed.
extends Control

signal hosted(session)

var session_manager: Node = null


func _ready() -> void:
	if session_manager == null:
		session_manager = get_node_or_null("/root/SessionManager")
	$Box/HostButton.connect("pressed", self, "_on_host_pressed")


func _on_host_pressed() -> void:
	$Box/ErrorLabel.text = ""
	$Box/HostButton.disabled = true
	var attributes := {}
	for field in [["mode", $Box/ModeEdit], ["map", $Box/MapEdit]]:
		var text: String = field[1].text.strip_edges()
		if text != "":
			attributes[field[0]] = text
	var visibility := "unlisted" if $Box/UnlistedCheck.pressed else "public"
	var rule := "all_ready" if $Box/AllReadyCheck.pressed else ""
	var needed := int($Box/MinPlayers.value)
	var reply = yield(session_manager.create_session(
			$Box/NameEdit.text.strip_edges(), int($Box/MaxPlayers.value), $Box/PasswordEdit.text,
			attributes, visibility, rule, needed if needed > 1 else 0), "completed")
	$Box/HostButton.disabled = false
	if reply.get("ok", false):
		emit_signal("hosted", reply["session"])
	else:
		$Box/ErrorLabel.text = reply["error"]["message"]
