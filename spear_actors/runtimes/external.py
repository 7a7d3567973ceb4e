"""External instances: agents started elsewhere that dial in with a secret.

A task with ``artifact_type = "external"`` has no code on this node. Its instances
are agents someone else started — in another container, on another machine, in a
Kubernetes pod — that dial the node's agent listener (unix or websocket) with a
one-time secret the node handed out (:meth:`ExternalRuntime.issue`, the
``issue_agent_secret`` method, ``spear agent-secret TASK``). From the hello on, the
connection is the instance: same protocol, same heartbeat, same supervision as an
agent the node spawned; its end (disconnect, silence, an unconfirmed cancel) is the
instance's failure, and the replacement waits for an agent with a new secret.

Matching: an instance of the task that is waiting (CREATING) takes the first agent
that dials in with one of the task's secrets; an agent that finds no instance waiting
stays connected in the task's *lobby* (heartbeats running) until an instance takes
it, or until its secret's expiry, when it is told goodbye. Secrets are kept only as
SHA-256 digests, looked up by digest (timing tells an attacker about the hashes of
their own guesses only), consumed by the first hello that presents them, and never
logged.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, ClassVar, Final

import trio

from .._nursery import background_nursery
from ..errors import ErrorCode, SpearError
from ..metrics.events import events
from ..model import InstancePolicy
from ..protocol.connection import Connection
from ..protocol.messages import Hello
from ..protocol.transports import parse_endpoint
from .agent_instance import AgentInstance
from .base import InstanceSpec, Runtime, RuntimeInstance
from .process import AgentServe, ProcessRuntime
from .sandbox import Sandbox

__all__ = ["ExternalInstance", "ExternalRuntime", "SecretLimits"]

log = logging.getLogger(__name__)

_NEVER_IDLE: Final = 365 * 86400.0
"""An external agent is not stopped for idleness (nobody would start it again)."""


@dataclasses.dataclass(frozen=True, slots=True)
class SecretLimits:
    """The operator's bounds on agent secrets (from ``[policy]``)."""

    default_ttl_s: float = 600.0
    """How long a secret is good for when the caller does not say."""
    max_ttl_s: float = 3600.0
    """The longest validity a caller may ask for."""
    max_per_task: int = 8
    """Secrets not yet used, plus agents waiting in the lobby, per task."""


@dataclasses.dataclass(eq=False, slots=True)
class _Ticket:
    """An issued secret not yet presented (stored under its digest only)."""

    task_id: str
    agent_id: str
    expires: float
    """Trio time after which the secret is refused."""


@dataclasses.dataclass(eq=False, slots=True)
class _DialIn:
    """An authenticated external agent's connection, before and while it is an instance."""

    ticket: _Ticket
    connection: Connection
    lobby: trio.CancelScope
    """Bounds the wait in the lobby (the secret's expiry); lifted once claimed."""
    claimed: bool = False


@dataclasses.dataclass(eq=False, slots=True)
class _Waiter:
    """An instance waiting for an agent."""

    arrived: trio.Event = dataclasses.field(default_factory=trio.Event)
    dial_in: _DialIn | None = None


class ExternalRuntime(Runtime):
    """Instances that are agents started elsewhere, dialling the process runtime's
    agent listener with a secret from :meth:`issue`."""

    kind = "external"
    needs_artifact = False
    policy_defaults = InstancePolicy(min_instances=1, idle_timeout_s=_NEVER_IDLE)

    def __init__(
        self,
        listener: ProcessRuntime,
        limits: SecretLimits | None = None,
        *,
        advertise: str | None = None,
        cancel_grace: float = 2.0,
        sandbox: Sandbox | None = None,
    ) -> None:
        if advertise is not None:
            parse_endpoint(advertise)  # INVALID_ARGUMENT at the node's start, not at the first secret
        self._listener = listener
        listener.doors.append(self)
        self.limits = limits or SecretLimits()
        self._advertise = advertise
        self.cancel_grace = cancel_grace
        self.sandbox = sandbox or Sandbox()
        self._tickets: dict[bytes, _Ticket] = {}
        self._lobby: dict[str, collections.deque[_DialIn]] = {}
        self._waiting: dict[str, collections.deque[_Waiter]] = {}

    @property
    def agent_address(self) -> str:
        """What an external agent dials (SERVICE_ADDR): ``agent_advertise``, else the
        bound agent listener."""
        return self._advertise or self._listener.address

    # -- secrets --------------------------------------------------------------------------
    def issue(self, task_id: str, task_name: str, ttl_s: float | None = None) -> dict[str, Any]:
        """A new one-time secret for one agent of *task_id*, good for *ttl_s* seconds
        (default and ceiling from :attr:`limits`). PERMISSION_DENIED for a TTL above
        the ceiling; RESOURCE_EXHAUSTED when the task has its maximum of secrets
        outstanding."""
        limits = self.limits
        ttl = limits.default_ttl_s if ttl_s is None else ttl_s
        if not (isinstance(ttl, int | float) and math.isfinite(ttl) and ttl > 0):
            raise SpearError(ErrorCode.INVALID_ARGUMENT, f"ttl_s must be a positive number of seconds, got {ttl!r}")
        if ttl > limits.max_ttl_s:
            raise SpearError(
                ErrorCode.PERMISSION_DENIED,
                f"not allowed by the node's policy: ttl_s {ttl:g} is above external_secret_max_ttl_s "
                f"{limits.max_ttl_s:g}",
                {"max_ttl_s": limits.max_ttl_s},
            )
        now = trio.current_time()
        self._forget_expired(now)
        outstanding = sum(1 for ticket in self._tickets.values() if ticket.task_id == task_id)
        outstanding += len(self._lobby.get(task_id, ()))
        if outstanding >= limits.max_per_task:
            raise SpearError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"task {task_name} has {outstanding} agent secrets outstanding (unused or waiting in the lobby); "
                f"the node allows {limits.max_per_task} (external_max_secrets_per_task)",
                {"outstanding": outstanding, "limit": limits.max_per_task},
            )
        secret = secrets.token_urlsafe(32)
        agent_id = f"agent-{secrets.token_hex(6)}"
        self._tickets[_digest(secret)] = _Ticket(task_id, agent_id, now + ttl)
        address = self.agent_address
        log.info("agent secret %s issued for task %s (%gs)", agent_id, task_name, ttl)
        return {
            "task_id": task_id,
            "task_name": task_name,
            "agent_id": agent_id,
            "secret": secret,
            "agent_addr": address,
            "ttl_s": ttl,
            "expires_at": round(time.time() + ttl, 3),
            "env": {"SERVICE_ADDR": address, "SECRET": secret},
        }

    def _forget_expired(self, now: float) -> None:
        for digest in [digest for digest, ticket in self._tickets.items() if ticket.expires <= now]:
            del self._tickets[digest]

    def admit(self, digest: bytes, hello: Hello) -> AgentServe | None:
        """The agent listener's door (:class:`~.process.AgentDoor`): consume the
        ticket of *digest*, if it is one of ours."""
        ticket = self._tickets.pop(digest, None)
        if ticket is None:
            return None
        if ticket.expires <= trio.current_time():
            log.warning("external agent %s refused: its secret has expired", ticket.agent_id)
            raise SpearError(ErrorCode.UNAUTHENTICATED, "agent secret expired")
        log.info(
            "external agent %s (peer id %r) dialled in for task %s", ticket.agent_id, hello.peer_id, ticket.task_id
        )
        return partial(self._serve, ticket)

    # -- matching agents and instances ------------------------------------------------------
    async def _serve(self, ticket: _Ticket, connection: Connection) -> None:
        """An admitted agent's whole life on the node: lobby, instance, end."""
        dial_in = _DialIn(ticket, connection, trio.CancelScope(deadline=ticket.expires))
        self._offer(dial_in)
        try:
            with dial_in.lobby:
                await connection.wait_closed()
            if dial_in.claimed:  # (claimed just as the lobby's time ran out)
                await connection.wait_closed()
        finally:
            self._leave_lobby(dial_in)
        if not dial_in.claimed and not connection.closed:
            log.info("external agent %s: no instance took it before its secret expired", ticket.agent_id)
            await connection.aclose(f"no instance of task {ticket.task_id} took this agent before its secret expired")

    def _offer(self, dial_in: _DialIn) -> None:
        """Hand *dial_in* to a waiting instance of its task, or put it in the lobby."""
        task_id = dial_in.ticket.task_id
        waiters = self._waiting.get(task_id)
        if waiters:
            waiter = waiters.popleft()
            if not waiters:
                del self._waiting[task_id]
            self._claim(dial_in)
            waiter.dial_in = dial_in
            waiter.arrived.set()
        else:
            self._lobby.setdefault(task_id, collections.deque()).append(dial_in)

    @staticmethod
    def _claim(dial_in: _DialIn) -> None:
        dial_in.claimed = True
        dial_in.lobby.deadline = math.inf

    def _leave_lobby(self, dial_in: _DialIn) -> None:
        lobby = self._lobby.get(dial_in.ticket.task_id)
        if lobby is not None and dial_in in lobby:
            lobby.remove(dial_in)
            if not lobby:
                del self._lobby[dial_in.ticket.task_id]

    def _from_lobby(self, task_id: str) -> _DialIn | None:
        lobby = self._lobby.get(task_id)
        while lobby:
            dial_in = lobby.popleft()
            if not dial_in.connection.closed:
                self._claim(dial_in)
                return dial_in
        self._lobby.pop(task_id, None)
        return None

    async def _wait_for_agent(self, task_id: str) -> _DialIn:
        dial_in = self._from_lobby(task_id)
        if dial_in is not None:
            return dial_in
        waiter = _Waiter()
        waiters = self._waiting.setdefault(task_id, collections.deque())
        waiters.append(waiter)
        try:
            await waiter.arrived.wait()
        except BaseException:
            if waiter.dial_in is not None:  # handed over as this instance was cancelled
                arrived, waiter.dial_in = waiter.dial_in, None
                arrived.claimed = False
                arrived.lobby.deadline = arrived.ticket.expires
                self._offer(arrived)
            elif waiter in waiters:
                waiters.remove(waiter)
                if not waiters and self._waiting.get(task_id) is waiters:
                    del self._waiting[task_id]
            raise
        assert waiter.dial_in is not None
        return waiter.dial_in

    # -- instances ------------------------------------------------------------------------
    @asynccontextmanager
    async def open_instance(self, spec: InstanceSpec) -> AsyncIterator[RuntimeInstance]:
        started = trio.current_time()
        dial_in = await self._wait_for_agent(spec.task_id)
        connection = dial_in.connection
        instance = ExternalInstance(
            spec.instance_id, dial_in.ticket.agent_id, self.cancel_grace, self.sandbox, task_id=spec.task_id
        )
        instance._attach(connection)
        recorder = events()
        if recorder is not None:
            recorder.instance_started(self.kind, spec.task_id, trio.current_time() - started)
        log.info(
            "external agent %s on %s is instance %s",
            dial_in.ticket.agent_id,
            connection.transport.description,
            spec.instance_id,
            extra={"task_id": spec.task_id, "instance_id": spec.instance_id},
        )
        try:
            async with background_nursery() as nursery:
                nursery.start_soon(instance._watch_connection)
                yield instance
        finally:
            instance._stopping = True
            with trio.CancelScope(shield=True):
                await connection.aclose("instance stopping")


class ExternalInstance(AgentInstance):
    """The connection of an agent started elsewhere; stopping it says goodbye."""

    kind: ClassVar[str] = "external"

    def __init__(
        self, instance_id: str, agent_id: str, cancel_grace: float, sandbox: Sandbox | None = None, *, task_id: str = ""
    ) -> None:
        super().__init__(instance_id, cancel_grace, sandbox, task_id=task_id)
        self.agent_id = agent_id

    def describe(self) -> dict[str, Any]:
        connection = self._connection
        return {"agent_id": self.agent_id, "peer": connection.transport.description if connection else None}

    def _failure_details(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id}


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()
