"""Password guesses, limited per client address and across the whole server.

A guess is counted *before* the password is compared, under one lock, so parallel sessions from
one address cannot all slip through between a check and the count. A client gets ``free_guesses``
guesses in ``window_s``; after that each further guess waits twice as long as the one before (up to
``max_wait_s``), counted from its last guess. Across all clients at most ``server_per_minute``
guesses are compared per minute, so many addresses cannot add up to a fast attack either. A right
password clears its client's count, and old guesses age out, so a real user's typo costs nothing.
A refused guess is answered at once with the wait: nothing sleeps, so no thread is tied up.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field


@dataclass
class GuessLimiter:
    free_guesses: int = 5  # per client address within the window, before waits begin
    window_s: float = 900.0  # a client's guesses count for 15 minutes
    max_wait_s: float = 300.0
    server_per_minute: int = 30  # guesses compared per minute, all clients together
    clock: object = time.monotonic
    _clients: dict[str, deque] = field(default_factory=dict, repr=False)
    _server: deque = field(default_factory=deque, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def attempt(self, client: str) -> float:
        """0 when ``client`` may compare a guess now (the guess is counted); else the seconds to wait."""
        with self._lock:
            now = self.clock()
            guesses = self._prune(client, now)
            wait = self._client_wait(guesses, now)
            if wait <= 0:
                wait = self._server_wait(now)
            if wait > 0:
                return wait
            guesses.append(now)
            self._server.append(now)
            return 0.0

    def succeeded(self, client: str) -> None:
        """The right password: this client's count starts again."""
        with self._lock:
            self._clients.pop(client, None)

    def _prune(self, client: str, now: float) -> deque:
        guesses = self._clients.setdefault(client, deque())
        while guesses and now - guesses[0] > self.window_s:
            guesses.popleft()
        while self._server and now - self._server[0] > 60.0:
            self._server.popleft()
        if len(self._clients) > 10_000:  # bounded memory: forget clients with nothing left to count
            for name in [c for c, g in self._clients.items() if not g and c != client]:
                del self._clients[name]
        return guesses

    def _client_wait(self, guesses: deque, now: float) -> float:
        over = len(guesses) - self.free_guesses
        if over < 0:
            return 0.0
        wait = min(2.0 ** (over + 1), self.max_wait_s)  # 2, 4, 8, … seconds after the last guess
        return max(0.0, guesses[-1] + wait - now)

    def _server_wait(self, now: float) -> float:
        if len(self._server) < self.server_per_minute:
            return 0.0
        return max(0.0, self._server[0] + 60.0 - now)
