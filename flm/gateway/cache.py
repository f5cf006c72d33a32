"""The configs of running APIs in memory: the request path never waits on the store."""

from __future__ import annotations

from collections import OrderedDict

from flm.records import ApiRecord


class ConfigCache:
    """LRU of API configs by port and by key hash; every change goes through ``put``/``drop``."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._by_port: OrderedDict[int, ApiRecord] = OrderedDict()
        self._by_key: dict[str, ApiRecord] = {}

    def by_port(self, port: int) -> ApiRecord | None:
        config = self._by_port.get(port)
        if config is not None:
            self._by_port.move_to_end(port)
        return config

    def by_key_hash(self, key_hash: str) -> ApiRecord | None:
        return self._by_key.get(key_hash)

    def put(self, config: ApiRecord) -> None:
        self.drop(config.id)
        self._by_port[config.port] = config
        self._by_key[config.key_hash] = config
        while len(self._by_port) > self._size:
            _, old = self._by_port.popitem(last=False)
            self._by_key.pop(old.key_hash, None)

    def drop(self, api_id: int) -> None:
        for port, config in list(self._by_port.items()):
            if config.id == api_id:
                del self._by_port[port]
                self._by_key.pop(config.key_hash, None)

    def __len__(self) -> int:
        return len(self._by_port)
