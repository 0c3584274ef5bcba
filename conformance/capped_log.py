"""A worker's output, kept to a fixed size: its first HEAD_BYTES and its last TAIL_BYTES.

A backend that prints megabytes per call must not fill the disk (20 MiB a call once wrote 3.5 GB of logs)
nor the memory. The worker runs with pytest's capture off (conformance/worker.py), so its output streams
through a pipe to the supervisor, which writes the head to the log as it comes, keeps a rolling tail in
memory, and writes the tail after a line that says how much was cut.
"""
from __future__ import annotations

import threading
from collections import deque
from pathlib import Path
from typing import BinaryIO

HEAD_BYTES = 1 * 2**20
TAIL_BYTES = 1 * 2**20
CHUNK = 64 * 2**10


class CappedLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open(path, "wb")
        self.head_left = HEAD_BYTES
        self.tail: deque[bytes] = deque()
        self.tail_size = 0
        self.cut = 0  # bytes dropped between the head and the tail
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            if not self.file.closed:  # closed: a process outside the worker's group still writes
                self._write(data)

    def _write(self, data: bytes) -> None:
        if self.head_left:
            head, data = data[:self.head_left], data[self.head_left:]
            self.file.write(head)
            self.file.flush()  # a supervisor killed outright still leaves the head
            self.head_left -= len(head)
        if not data:
            return
        self.tail.append(data)
        self.tail_size += len(data)
        while self.tail_size - len(self.tail[0]) >= TAIL_BYTES:  # whole chunks beyond the tail's size go
            self.tail_size -= len(dropped := self.tail.popleft())
            self.cut += len(dropped)

    def follow(self, stream: BinaryIO) -> threading.Thread:
        """Copy `stream` (the worker's stdout) into the log until it closes, on a thread of its own."""
        def pump() -> None:
            with stream:
                while chunk := stream.read1(CHUNK):
                    self.write(chunk)

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        with self.lock:
            if self.cut:
                self.file.write(f"\n[resconf: {self.cut} bytes of output cut here: the log keeps the first "
                                f"{HEAD_BYTES} and the last {self.tail_size}]\n".encode())
            self.file.writelines(self.tail)
            self.file.close()

    def last(self, size: int) -> str:
        """The end of the output, as text (after close)."""
        with open(self.path, "rb") as f:
            f.seek(max(0, self.path.stat().st_size - size))
            return f.read().decode(errors="replace")
