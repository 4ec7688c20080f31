"""``Budget``: at most ``limit`` units (bytes) held at once by the requests a server is working on.

One class for the server's two byte budgets: the request bodies it holds (``BodyGateMiddleware``, on the
event loop) and the decoded images of the requests being prepared (``_Dispatch``, in worker threads).
"""

from __future__ import annotations

import threading


class Budget:
    """At most ``limit`` held in all (thread-safe); ``refused`` counts the takes that did not fit."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0
        self.refused = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        """Hold ``size`` more if it fits beside what is held; False (nothing held, one refusal counted) if not."""
        with self._lock:
            if self.held + size > self.limit:
                self.refused += 1
                return False
            self.held += size
            return True

    def admits(self, size: int) -> bool:
        """Whether ``size`` more would fit beside what is held now (nothing taken); one refusal counted if not."""
        with self._lock:
            if self.held + size > self.limit:
                self.refused += 1
                return False
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self.held -= size
