"""Checks of an input frame's header that do not make it a bad frame, without rclpy.

A frame with a zero stamp, a stamp that goes backwards or one far from the node clock is still
solved and published with that stamp (consumers sync on it), but it is reported and its latency
is left out of the statistics, where one such frame would swamp a hundred good ones. An empty
frame_id is reported too; outputs then carry ``output_frame_id`` when that is set.
"""
from __future__ import annotations

NS = 1_000_000_000


class StampChecker:
    """Remembers the previous frame's stamp (reset on activation)."""

    def __init__(self) -> None:
        self._previous_ns: int | None = None

    def reset(self) -> None:
        self._previous_ns = None

    def check(self, stamp_ns: int, frame_id: str, now_ns: int, max_skew_s: float | None,
              output_frame_id: str = "") -> tuple[list[str], bool]:
        """(problems, stamp_trusted) of one frame. ``now_ns`` is the node clock; 0 (sim time
        before the first /clock) skips the skew check, as does ``max_skew_s`` None."""
        problems: list[str] = []
        trusted = True
        previous, self._previous_ns = self._previous_ns, stamp_ns
        if stamp_ns == 0:
            problems.append("stamp is zero")
            trusted = False
        else:
            if previous is not None and stamp_ns < previous:
                problems.append(f"stamp went backwards by {(previous - stamp_ns) / NS:.3f} s")
                trusted = False
            if max_skew_s is not None and now_ns > 0 and abs(now_ns - stamp_ns) > max_skew_s * NS:
                offset = (stamp_ns - now_ns) / NS
                where = "ahead of" if offset > 0 else "behind"
                problems.append(f"stamp {abs(offset):.3f} s {where} the node clock (max_stamp_skew {max_skew_s:g} s)")
                trusted = False
        if not frame_id:
            problems.append("empty frame_id; outputs use " + (f"output_frame_id {output_frame_id!r}" if output_frame_id
                                                               else "an empty frame_id too (set output_frame_id)"))
        return problems, trusted
