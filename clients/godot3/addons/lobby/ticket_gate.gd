# The RPC node through which an ENet client presents its join ticket to the
# game server. Godot 3 has no connection-level authentication, so both sides
# put this node at the same path, /root/LobbyTicketGate, as RPCs require.
extends Node

signal ticket_presented(peer_id, ticket)
signal accepted(player_id)
signal refused(reason)

const NODE_NAME := "LobbyTicketGate"


func _ready() -> void:
	# rpc_config instead of the remote/puppet keywords: the same rules, and the
	# file stays readable by gdtoolkit's Godot 4 grammar.
	rpc_config("present_ticket", MultiplayerAPI.RPC_MODE_MASTER)
	rpc_config("ticket_accepted", MultiplayerAPI.RPC_MODE_PUPPET)
	rpc_config("ticket_refused", MultiplayerAPI.RPC_MODE_PUPPET)


func present_ticket(ticket) -> void:
	var sender := get_tree().get_rpc_sender_id()
	if typeof(ticket) != TYPE_STRING:
		ticket = ""
	emit_signal("ticket_presented", sender, ticket)


func ticket_accepted(player_id) -> void:
	emit_signal("accepted", str(player_id))


func ticket_refused(reason) -> void:
	emit_signal("refused", str(reason))


# The gate of this scene tree, created at /root/LobbyTicketGate on first use.
static func ensure(tree: SceneTree, script: Script) -> Node:
	var gate := tree.root.get_node_or_null(NODE_NAME)
	if gate == null:
		gate = script.new()
		gate.name = NODE_NAME
		tree.root.call_deferred("add_child", gate)
	return gate
