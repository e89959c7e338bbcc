@tool
extends EditorPlugin
## Registers the addon's autoloads when the plugin is enabled and removes them when
## it is disabled. SessionManager comes first: MultiplayerManager finds it at
## /root/SessionManager when it starts.


func _enable_plugin() -> void:
	var base := _base_dir()
	add_autoload_singleton("SessionManager", base.path_join("session_manager.gd"))
	add_autoload_singleton("MultiplayerManager", base.path_join("multiplayer_manager.gd"))


func _disable_plugin() -> void:
	remove_autoload_singleton("MultiplayerManager")
	remove_autoload_singleton("SessionManager")


## The folder this plugin lives in (res://addons/lobby unless it was moved).
func _base_dir() -> String:
	var script: Script = get_script()
	return script.resource_path.get_base_dir()
