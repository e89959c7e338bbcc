"""Where each piece of state lives in Redis: the key layout, in one place.

Every rule-bearing script touches one hash slot, so the same scripts run on one
Redis, behind Sentinel and on Redis Cluster:

* a session lives in one of B **session buckets**, `{PREFIX}{sK}:…` with
  K = crc32(session id) mod B: its record, chat, event channel, and the
  bucket's search indexes, deadlines, seat holds, sweep lease and rebuild epoch.
  B is fixed for a deployment (`--redis-buckets`; a Redis that already holds
  another B refuses to start the node);
* a player's record has a slot of its own, `{PREFIX}p:{PID}`;
* a join code and a game-server id each map to their session under a key of
  their own (`code:{CODE}`, `srv:{ID}`): written after the session and checked
  against it on read, so a crash between the two steps shows nothing wrong;
* node liveness is one slot, `{PREFIX}{nodes}:…`; a node's own message channel
  (`replaced`) is `{PREFIX}{n:NODE}:msg`.

Sharded pub/sub (SPUBLISH/SSUBSCRIBE) puts a session's channel on its
bucket's slot: on a cluster the event goes to one master only.
"""

from __future__ import annotations

import zlib


class Keys:
    def __init__(self, prefix: str = "lobby:", buckets: int = 1) -> None:
        if not 1 <= buckets <= 1024:
            raise ValueError("buckets must be between 1 and 1024")
        self.prefix = prefix
        self.buckets = buckets
        self._bucket_prefixes = [f"{prefix}{{s{k}}}:" for k in range(buckets)]
        self.nodes = f"{prefix}{{nodes}}:"
        self.meta = f"{prefix}{{nodes}}:meta"

    def bucket(self, session_id: str) -> int:
        if self.buckets == 1:
            return 0
        return zlib.crc32(session_id.encode()) % self.buckets

    def bucket_prefix(self, k: int) -> str:
        """The prefix of every key of bucket k; scripts get it as KEYS[1]."""
        return self._bucket_prefixes[k]

    def of_session(self, session_id: str) -> str:
        return self._bucket_prefixes[self.bucket(session_id)]

    def session(self, session_id: str) -> str:
        return f"{self.of_session(session_id)}s:{session_id}"

    def channel(self, session_id: str) -> str:
        """The session's sharded pub/sub channel (on its bucket's slot)."""
        return f"{self.of_session(session_id)}ev:{session_id}"

    def player(self, player_id: str) -> str:
        return f"{self.prefix}p:{{{player_id}}}"

    def code(self, code: str) -> str:
        return f"{self.prefix}code:{{{code}}}"

    def server(self, server_id: str) -> str:
        return f"{self.prefix}srv:{{{server_id}}}"

    def node_channel(self, node: str) -> str:
        return f"{self.prefix}{{n:{node}}}:msg"

    def address(self, address: str) -> str:
        """The prefix of a client address' keys (limits shared by all nodes)."""
        return f"{self.prefix}{{a:{address}}}:"
