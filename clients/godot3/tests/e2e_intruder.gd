# Connects to the game server over ENet with a ticket the lobby never signed
# (--ticket) and passes only if the server refuses it and drops the link.
extends "res://tests/harness.gd"

const TicketGateScript = preload("res://addons/lobby/ticket_gate.gd")
const MultiplayerManagerScript = preload("res://addons/lobby/multiplayer_manager.gd")

var peer: NetworkedMultiplayerENet
var gate: Node
var refused_reason := ""


func setup() -> void:
	var address: Array = MultiplayerManagerScript.parse_endpoint(args.get("endpoint", ""))
	if not check(address.size() == 2, "endpoint"):
		return
	gate = TicketGateScript.ensure(self, TicketGateScript)
	gate.connect("accepted", self, "_on_accepted")
	gate.connect("refused", self, "_on_refused")
	peer = NetworkedMultiplayerENet.new()
	check(peer.create_client(address[0], address[1]) == OK, "create_client")
	peer.connect("connection_succeeded", self, "_on_connected")
	peer.connect("server_disconnected", self, "_on_dropped")
	network_peer = peer


func _on_connected() -> void:
	gate.rpc_id(1, "present_ticket", args.get("ticket", ""))


func _on_accepted(player_id: String) -> void:
	fail("a forged ticket was accepted as %s" % player_id)


func _on_refused(reason: String) -> void:
	refused_reason = reason
	say("INTRUDER_REFUSED reason=%s" % reason)


func _on_dropped() -> void:
	if check(refused_reason != "", "dropped without a refusal"):
		pass_with("INTRUDER_OK")
