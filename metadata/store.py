"""`LocalMetadataStore`: the metadata of a single-node cluster, kept in one file.

Theory of operation
-------------------
A store holds the current `MetadataImage` and changes it only by applying commands in order. This
one is the embedded single-node store: it applies a proposed command at once and persists the new image
before it answers, so a command is durable when `propose` returns. The Raft-replicated store (for
clusters) keeps the same interface: `image`, `propose`, `subscribe`.

On disk: `<data dir>/metadata/image.json` (the image as JSON, see MetadataImage.to_dict), replaced
atomically (temp file, fsync, rename), so a crash leaves the image before or after a command.

Thread-safety: `propose` runs on the event loop; listeners are called there, after each change.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import orjson

from metadata.commands import apply
from metadata.image import MetadataImage
from storage.fileio import write_atomic

IMAGE_FILE = "image.json"

Listener = Callable[[MetadataImage, MetadataImage], None]


class LocalMetadataStore:
    def __init__(self, directory: str):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, IMAGE_FILE)
        self._listeners: list[Listener] = []
        if os.path.exists(self.path):
            with open(self.path, "rb") as handle:
                self.image = MetadataImage.from_dict(orjson.loads(handle.read()))
        else:
            self.image = MetadataImage()

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(old, new)` after every applied command."""
        self._listeners.append(listener)

    async def propose(self, command: Any) -> MetadataImage:
        """Apply `command`, persist the result, tell the listeners; returns the new image."""
        old = self.image
        new = apply(old, command)
        write_atomic(self.path, orjson.dumps(new.to_dict()))
        self.image = new
        for listener in self._listeners:
            listener(old, new)
        return new
