"""Password guesses, limited per client, per address and across the whole server.

Three counts, each guess counted in all three *before* the password is compared, under one lock, so
parallel requests cannot slip through between a check and the count:

- **per client**: a browser that fetched the login form carries its own client id (a signed cookie);
  requests without one share one client per address. A client gets ``free_guesses`` guesses in
  ``window_s``; after that each further guess waits twice as long as the one before (2, 4, 8 … s, at
  most ``max_wait_s``) after its last one. This is the lock-out: it stops one browser or script.
- **per address**: after ``address_free`` guesses in the window, guesses from that address are spaced
  ``address_spacing_s`` apart, whoever sends them. This is only a short back-off, never a lock-out: an
  attacker who shares a real user's address (an office, a NAT, a reverse proxy) slows the user by
  seconds and cannot keep them out; the attacker, who must take a fresh client id every few guesses,
  gets one guess per ``address_spacing_s``.
- **across the server**: after ``server_per_minute`` guesses in a minute, guesses are spaced
  ``server_spacing_s`` apart, so many addresses together cannot make a fast attack either, and again
  nobody is locked out.

A right password clears its client's count (not the address's: the attacker's guesses there still
count), and old guesses age out, so a real user's typo costs nothing. ``attempt`` never sleeps: it
answers the wait, and the caller decides whether to wait it out (the login route waits out a short
one, so a real user is let through a back-off without typing again).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_TRACKED = 10_000  # clients and addresses remembered; the ones with nothing left to count go first


@dataclass
class GuessLimiter:
    free_guesses: int = 5  # per client within the window, before its waits begin
    window_s: float = 900.0  # a guess counts for 15 minutes
    max_wait_s: float = 300.0  # the longest a client waits between guesses
    address_free: int = 20  # per address within the window, before its guesses are spaced
    address_spacing_s: float = 3.0
    server_per_minute: int = 30  # guesses compared per minute, all clients together, before spacing
    server_spacing_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    _clients: dict[str, deque] = field(default_factory=dict, repr=False)
    _addresses: dict[str, deque] = field(default_factory=dict, repr=False)
    _server: deque = field(default_factory=deque, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def attempt(self, address: str, client: str | None = None) -> float:
        """0 when a guess from ``client`` at ``address`` may be compared now (it is counted); else the
        seconds to wait. ``client`` None: a request without a client id, one shared client per address."""
        key = _client_key(address, client)
        with self._lock:
            now = self.clock()
            guesses = _recent(self._clients, key, now, self.window_s)
            at_address = _recent(self._addresses, address, now, self.window_s)
            while self._server and now - self._server[0] > 60.0:
                self._server.popleft()
            wait = max(self._client_wait(guesses, now),
                       _spacing_wait(at_address, self.address_free, self.address_spacing_s, now),
                       _spacing_wait(self._server, self.server_per_minute, self.server_spacing_s, now))
            if wait > 0:
                return wait
            for counted in (guesses, at_address, self._server):
                counted.append(now)
            return 0.0

    def succeeded(self, address: str, client: str | None = None) -> None:
        """The right password: this client's count starts again."""
        with self._lock:
            self._clients.pop(_client_key(address, client), None)

    def _client_wait(self, guesses: deque, now: float) -> float:
        over = len(guesses) - self.free_guesses
        if over < 0:
            return 0.0
        wait = min(2.0 ** (over + 1), self.max_wait_s)  # 2, 4, 8, … seconds after the last guess
        return max(0.0, guesses[-1] + wait - now)


def _client_key(address: str, client: str | None) -> str:
    return f"client {client}" if client else f"no client id at {address}"


def _recent(table: dict[str, deque], key: str, now: float, window_s: float) -> deque:
    """``key``'s guesses within the window (older ones dropped); the table stays bounded."""
    guesses = table.setdefault(key, deque())
    while guesses and now - guesses[0] > window_s:
        guesses.popleft()
    if len(table) > MAX_TRACKED:
        for name in [k for k, g in table.items() if (not g or now - g[-1] > window_s) and k != key]:
            del table[name]
    return guesses


def _spacing_wait(guesses: deque, free: int, spacing_s: float, now: float) -> float:
    if len(guesses) < free or not guesses:
        return 0.0
    return max(0.0, guesses[-1] + spacing_s - now)
