"""The plugin host: loads entry points safely, one registry per kind of thing."""

from fundbench.host.loading import ENTRY_POINT_GROUP, HOOK_REGISTRIES, Host, get_host
from fundbench.host.registry import Entry, PluginInfo, Registry

__all__ = [
    "ENTRY_POINT_GROUP",
    "HOOK_REGISTRIES",
    "Entry",
    "Host",
    "PluginInfo",
    "Registry",
    "get_host",
]
