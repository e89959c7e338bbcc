"""Game-server allocators: where a started session gets its ENet endpoint."""

from lobby.allocators.base import Allocation, Allocator, NoServerAvailable

__all__ = ["Allocation", "Allocator", "NoServerAvailable"]
