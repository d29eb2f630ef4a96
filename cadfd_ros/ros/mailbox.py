"""Hand-off from the executor callbacks to the solver worker.

Kept free of any rclpy node so the drop-stale-frames and stamp-pairing rules can be tested
without DDS. Callbacks only store here; they never wait for the solver.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Any

INFO_HISTORY = 30  # camera_info messages kept for stamp matching (1 s at 30 Hz)
INFO_WAIT_S = 0.05  # how long a frame waits for its camera_info when one is expected
EXPECT_INFO_S = 1.0  # a camera_info is expected this long after the last one, or after activation


class LatestFrame:
    """One-slot mailbox: ``put`` replaces an unprocessed frame (that frame is dropped)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: tuple | None = None
        self._closed = False

    def put(self, item: tuple) -> bool:
        """Store ``item``; True when it replaced a frame the worker never saw."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self) -> tuple | None:
        """Block until a frame arrives (returned) or the slot is closed (None)."""
        with self._cond:
            while self._item is None and not self._closed:
                self._cond.wait()
            item, self._item = self._item, None
            return None if self._closed else item

    def open(self) -> None:
        with self._cond:
            self._closed, self._item = False, None

    def close(self) -> None:
        with self._cond:
            self._closed, self._item = True, None
            self._cond.notify_all()


class CameraInfoBuffer:
    """Recent camera_info by stamp, so each image gets the one of its own stamp.

    Drivers publish image and camera_info in either order; pairing by stamp here avoids
    message_filters and its queues.
    """

    def __init__(self, history: int = INFO_HISTORY, wait_s: float = INFO_WAIT_S) -> None:
        self._history = history
        self._wait_s = wait_s
        self._infos: collections.OrderedDict[tuple[int, int], Any] = collections.OrderedDict()
        self._cond = threading.Condition()
        self._last_info_mono = -1e9

    def add(self, info: Any) -> None:
        with self._cond:
            self._infos[(info.header.stamp.sec, info.header.stamp.nanosec)] = info
            while len(self._infos) > self._history:
                self._infos.popitem(last=False)
            self._last_info_mono = time.monotonic()
            self._cond.notify_all()

    def match(self, image_header_stamp: Any, activated_mono: float, size: tuple[int, int] | None = None) -> Any | None:
        """The camera_info with the image's stamp; else the newest whose (width, height) is
        ``size`` (the newest of any size when ``size`` is None); else None (bank intrinsics)."""
        return self.pair(image_header_stamp, activated_mono, size)[0]

    def pair(self, image_header_stamp: Any, activated_mono: float,
             size: tuple[int, int] | None = None) -> tuple[Any | None, list[tuple[int, int]]]:
        """(camera_info, sizes passed over): ``match``'s answer, and the sizes of the newer
        camera_infos that were not used because they describe another image size. A stray
        camera_info of another size therefore never poisons frames that lack their own.

        Waits up to ``wait_s`` for the exact stamp, but only while a camera_info stream exists
        (or may still start, just after activation); otherwise answers at once.
        """
        key = (image_header_stamp.sec, image_header_stamp.nanosec)
        deadline = time.monotonic() + self._wait_s
        with self._cond:
            while key not in self._infos:
                now = time.monotonic()
                expecting = now - self._last_info_mono < EXPECT_INFO_S or now - activated_mono < EXPECT_INFO_S
                if not expecting or now >= deadline:
                    break
                self._cond.wait(deadline - now)
            exact = self._infos.get(key)
            if exact is not None:
                return exact, []
            passed_over: list[tuple[int, int]] = []
            for info in reversed(self._infos.values()):
                info_size = (int(info.width), int(info.height))
                if size is None or info_size == tuple(size):
                    return info, passed_over
                if info_size not in passed_over:
                    passed_over.append(info_size)
            return None, passed_over

    def clear(self) -> None:
        with self._cond:
            self._infos.clear()

    def __len__(self) -> int:
        with self._cond:
            return len(self._infos)
