@tool
extends EditorPlugin
## Registers the addon's autoloads when the plugin is enabled and removes them when
## it is disabled. SessionManager comes first: MultiplayerManager finds it at
## /root/SessionManager when it starts.
##
## add_autoload_singleton() silently replaces an autoload of the same name, and
## remove_autoload_singleton() deletes whatever holds the name. A game that already
## has a SessionManager or MultiplayerManager of its own would lose it, so a name
## held by another script is left alone (and said so), and only autoloads pointing
## at this addon's scripts are ever removed.

const AUTOLOADS := [
	["SessionManager", "session_manager.gd"],
	["MultiplayerManager", "multiplayer_manager.gd"],
]


func _enable_plugin() -> void:
	var base := _base_dir()
	for entry in AUTOLOADS:
		var autoload_name: String = entry[0]
		var path := base.path_join(entry[1])
		var current := _autoload_path(autoload_name)
		if current == "":
			add_autoload_singleton(autoload_name, path)
		elif current != path:
			push_error(
				(
					"Lobby plugin: the autoload %s already exists (%s) and is left as it is. "
					+ "Rename that autoload, then disable and enable the Lobby plugin again, "
					+ "or add %s by hand under another name (clients/godot/README.md)."
				)
				% [autoload_name, current, path]
			)


func _disable_plugin() -> void:
	var base := _base_dir()
	for i in range(AUTOLOADS.size() - 1, -1, -1):
		var autoload_name: String = AUTOLOADS[i][0]
		if _autoload_path(autoload_name) == base.path_join(AUTOLOADS[i][1]):
			remove_autoload_singleton(autoload_name)


## The script an autoload points at ("" when there is none), without the "*" that
## marks it as a global singleton.
static func _autoload_path(autoload_name: String) -> String:
	var key := "autoload/" + autoload_name
	if not ProjectSettings.has_setting(key):
		return ""
	return str(ProjectSettings.get_setting(key)).trim_prefix("*")


## The folder this plugin lives in (res://addons/lobby unless it was moved).
func _base_dir() -> String:
	var script: Script = get_script()
	return script.resource_path.get_base_dir()
