"""The external runtime's secrets and matching, as a property: whatever the order of
secrets issued, agents dialling in (with fresh, used, expired or wrong secrets),
instances waiting and stopping, agents leaving and time passing, the rules hold
(one hello per secret, one agent per instance, no agent idle in the lobby while an
instance of its task waits, a lobby emptied at expiry, bounded secrets)."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spear_actors.errors import ErrorCode, SpearError
from spear_actors.model import ArtifactSpec
from spear_actors.protocol.connection import Connection
from spear_actors.protocol.handshake import open_connection
from spear_actors.protocol.messages import Hello
from spear_actors.protocol.transports import open_transport
from spear_actors.runtimes.base import InstanceSpec
from spear_actors.runtimes.external import ExternalInstance, ExternalRuntime, SecretLimits
from spear_actors.runtimes.process import ProcessRuntime

LIMIT = 3
TASKS = ("t1", "t2")


@dataclasses.dataclass(eq=False)
class _Secret:
    value: str
    task: str
    agent_id: str
    expires: float
    used: bool = False


@dataclasses.dataclass(eq=False)
class _Agent:
    secret: _Secret | None
    scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    link: Connection | None = None
    refusal: SpearError | None = None


@dataclasses.dataclass(eq=False)
class _Instance:
    task: str
    scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    agent_id: str | None = None
    stopped: bool = False


operation = st.one_of(
    st.tuples(st.just("issue"), st.integers(0, 1), st.sampled_from([10.5, 30.5])),
    st.tuples(st.just("dial"), st.integers(0, 30), st.sampled_from(["fresh", "any", "wrong"])),
    st.tuples(st.just("instance"), st.integers(0, 1), st.just("")),
    st.tuples(st.just("stop"), st.integers(0, 30), st.just("")),
    st.tuples(st.just("leave"), st.integers(0, 30), st.just("")),
    st.tuples(st.just("sleep"), st.integers(1, 20), st.just("")),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(operation, min_size=1, max_size=30))
def test_secrets_and_matching_keep_their_rules(ops: list[tuple[str, Any, Any]]) -> None:
    directory = tempfile.mkdtemp(prefix="spear-ext-")
    try:
        trio.run(_scenario, directory, ops, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _scenario(directory: str, ops: list[tuple[str, Any, Any]]) -> None:
    listener = ProcessRuntime(f"unix://{directory}/agents.sock", heartbeat_interval=1.0, heartbeat_timeout=5.0)
    runtime = ExternalRuntime(listener, SecretLimits(default_ttl_s=10.5, max_ttl_s=60.0, max_per_task=LIMIT))
    secrets: list[_Secret] = []
    agents: list[_Agent] = []
    instances: list[_Instance] = []

    async def agent(record: _Agent, secret: str, *, task_status: trio.TaskStatus[None]) -> None:
        started = False
        try:
            async with (
                open_transport(runtime.agent_address) as transport,
                open_connection(transport, Hello(role="agent", auth=secret)) as link,
            ):
                record.link = link
                started = True
                task_status.started()
                with record.scope:
                    await link.wait_closed()
        except SpearError as exc:
            record.refusal = exc
        if not started:
            task_status.started()

    async def instance(record: _Instance, number: int, *, task_status: trio.TaskStatus[None]) -> None:
        spec = InstanceSpec(f"i{number}", record.task, record.task, ArtifactSpec(artifact_type="external"), None)
        task_status.started()
        with record.scope:
            async with runtime.open_instance(spec) as opened:
                assert isinstance(opened, ExternalInstance)
                record.agent_id = opened.agent_id
                await trio.sleep_forever()

    def claimed() -> set[str]:
        return {i.agent_id for i in instances if i.agent_id is not None and not i.stopped}

    def in_lobby(task: str) -> list[_Agent]:
        taken = {i.agent_id for i in instances if i.agent_id is not None}
        return [
            a
            for a in agents
            if a.secret is not None
            and a.secret.task == task
            and a.link is not None
            and not a.link.closed
            and a.secret.agent_id not in taken
        ]

    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        for kind, a, b in ops:
            now = trio.current_time()
            if kind == "issue":
                task = TASKS[a]
                outstanding = sum(1 for s in secrets if s.task == task and not s.used and s.expires > now)
                outstanding += len(in_lobby(task))
                try:
                    issued = runtime.issue(task, task, b)
                except SpearError as exc:
                    assert exc.code is ErrorCode.RESOURCE_EXHAUSTED and outstanding >= LIMIT, (exc, outstanding)
                else:
                    assert outstanding < LIMIT
                    secrets.append(_Secret(issued["secret"], task, issued["agent_id"], now + b))
            elif kind == "dial":
                fresh = [s for s in secrets if not s.used]
                chosen: _Secret | None
                if b == "wrong" or not secrets:
                    chosen, value = None, "wrong-secret"
                else:
                    pool = fresh if b == "fresh" and fresh else secrets
                    chosen = pool[a % len(pool)]
                    value = chosen.value
                record = _Agent(chosen)
                agents.append(record)
                await nursery.start(agent, record, value)
                if chosen is not None and not chosen.used and chosen.expires > now:
                    assert record.link is not None and record.refusal is None, record.refusal
                    chosen.used = True
                else:
                    assert record.refusal is not None and record.refusal.code is ErrorCode.UNAUTHENTICATED
                    if chosen is None or chosen.used:
                        assert "unknown or already used" in record.refusal.message
                    record.secret = None  # never admitted
            elif kind == "instance":
                record_i = _Instance(TASKS[a])
                instances.append(record_i)
                await nursery.start(instance, record_i, len(instances))
            elif kind == "stop" and instances:
                target = instances[a % len(instances)]
                target.scope.cancel()
                target.stopped = True
            elif kind == "leave" and agents:
                agents[a % len(agents)].scope.cancel()
            elif kind == "sleep":
                await trio.sleep(a)
            await trio.testing.wait_all_tasks_blocked()
            _check(agents, instances, claimed(), in_lobby)
        nursery.cancel_scope.cancel()


def _check(agents: list[_Agent], instances: list[_Instance], claimed: set[str], in_lobby: Any) -> None:
    now = trio.current_time()
    by_id = {a.secret.agent_id: a for a in agents if a.secret is not None}
    live = [i for i in instances if not i.stopped]
    # One agent per instance, of the instance's own task, and never two instances for one agent.
    taken = [i.agent_id for i in live if i.agent_id is not None]
    assert len(taken) == len(set(taken))
    for i in live:
        if i.agent_id is not None:
            owner = by_id[i.agent_id]
            assert owner.secret is not None and owner.secret.task == i.task
    for task in TASKS:
        waiting = [i for i in live if i.task == task and i.agent_id is None]
        lobby = in_lobby(task)
        # Matching is eager: an agent never idles while an instance of its task waits.
        assert not (waiting and lobby), (task, len(waiting), len(lobby))
        # The lobby is emptied when secrets expire.
        for a in lobby:
            assert a.secret is not None and a.secret.expires > now, "lobby agent kept past its secret's expiry"
    # A stopped instance said goodbye to its agent.
    for i in instances:
        if i.stopped and i.agent_id is not None:
            link = by_id[i.agent_id].link
            assert link is not None and link.closed
    # Claimed agents that did not leave are still connected.
    for agent_id in claimed:
        agent = by_id[agent_id]
        assert agent.link is not None
        if not agent.scope.cancel_called:
            assert not agent.link.closed
