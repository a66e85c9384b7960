"""Stop requests (SIGTERM, Ctrl-C) turned into a flag the training loop checks between
updates, so that it can save a checkpoint of a consistent state before it exits
(:class:`StopRequests`; a second Ctrl-C raises :class:`KeyboardInterrupt` at once), and, for
the other commands, SIGTERM turned into Ctrl-C (:class:`TerminateAsInterrupt`)."""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self


class StopRequests:
    """Context manager: while active, SIGTERM and SIGINT set :attr:`signum` instead of killing."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def name(self) -> str:
        return {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}.get(self.signum or 0, str(self.signum))

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


class TerminateAsInterrupt:
    """Context manager for commands: SIGTERM raises :class:`KeyboardInterrupt` like Ctrl-C, so
    temporary folders are removed on the way out; :attr:`terminated` tells the two apart."""

    def __init__(self) -> None:
        self.terminated = False
        self._previous: object = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.terminated = True
        raise KeyboardInterrupt

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)  # type: ignore[arg-type]
