# Host Game dialog: name, max players, optional password -> create_session.
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
	var reply = yield(session_manager.create_session(
			$Box/NameEdit.text.strip_edges(), int($Box/MaxPlayers.value), $Box/PasswordEdit.text),
			"completed")
	$Box/HostButton.disabled = false
	if reply.get("ok", false):
		emit_signal("hosted", reply["session"])
	else:
		$Box/ErrorLabel.text = reply["error"]["message"]
