"""Who may reach the node, and how hard they may knock.

:func:`check_exposure` refuses to start a node that listens beyond loopback without
a token (unless the operator says ``insecure``); :class:`AuthThrottle` counts failed
authentications per peer address and refuses an address past its budget without
checking what it sends.
"""

from __future__ import annotations

import collections
from typing import Final

import trio

from ..config import NodeConfig
from ..errors import ErrorCode, SpearError
from ..policy import listens_beyond_loopback
from ..protocol.handshake import Authenticator
from ..protocol.messages import Hello
from .refusals import RefusalLog

__all__ = ["AuthThrottle", "check_exposure"]

_MAX_TRACKED_PEERS: Final = 10_000


def check_exposure(config: NodeConfig) -> None:
    """FAILED_PRECONDITION if a gateway would listen beyond loopback without a token
    and the operator has not allowed it (``insecure``)."""
    if config.token or config.insecure:
        return
    for url in config.listen:
        if listens_beyond_loopback([url]):
            raise SpearError(
                ErrorCode.FAILED_PRECONDITION,
                f"refusing to listen on {url} without a token: anyone who can connect could run code "
                "as this node's user",
                {
                    "hint": "give a token (--token-file FILE, $SPEAR_TOKEN or `token` in the config), "
                    "or pass --insecure (config: insecure = true) if this is really wanted"
                },
            )


class AuthThrottle:
    """Failed authentications per peer address, over a sliding window."""

    def __init__(self, max_failures: int, window: float, refusals: RefusalLog) -> None:
        self.max_failures = max_failures
        self.window = window
        self._refusals = refusals
        self._failures: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def wrap(self, authenticator: Authenticator, peer_address: str) -> Authenticator:
        """*authenticator* for one connection from *peer_address*: refused at once while
        the address is over its budget; each failure counted and logged (rate-limited)."""

        async def authenticate(hello: Hello) -> object:
            now = trio.current_time()
            failures = self._recent(peer_address, now)
            if len(failures) >= self.max_failures:
                retry = failures[0] + self.window - now
                self._refusals.refused("authentication throttled", f"peer {peer_address!r}")
                raise SpearError(
                    ErrorCode.UNAUTHENTICATED,
                    f"too many failed authentications from this address; retry in {retry:.0f} s",
                    {"retry_after_ms": max(1, round(retry * 1000))},
                )
            try:
                return await authenticator(hello)
            except SpearError:
                self._record(peer_address, now)
                self._refusals.refused("failed authentication", f"peer {peer_address!r}")
                raise

        return authenticate

    def _recent(self, peer: str, now: float) -> collections.deque[float]:
        failures = self._failures.get(peer)
        if failures is None:
            return collections.deque()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[peer]
        return failures

    def _record(self, peer: str, now: float) -> None:
        failures = self._failures.setdefault(peer, collections.deque())
        failures.append(now)
        self._failures.move_to_end(peer)
        if len(self._failures) > _MAX_TRACKED_PEERS:
            self._failures.popitem(last=False)  # forget the longest-quiet address
