"""Routing: a client may call any node; calls for tasks and executions owned
elsewhere are forwarded to the owner.

The gateway hands every call to :class:`ClusterRouter` when the node is in a cluster
(``Gateway.router``). The owner of an execution is named by its id
(:func:`.ids.execution_owner`); an execution id chosen by a client names no node,
and is served by the node asked if it holds it, else by the live peer that answers
for it (a bounded lookup). The owner of a task is named by its claim (the
:class:`.view.ClusterView`, then the id's node part). A call that arrives from a peer
node (hello role ``node``) is served here and never forwarded again, except a new
task's name lost to another node's claim (one more hop, to the winner, who owns it).
Streams pass through item by item, so the client's credit paces the owner; cancelling
the client's call cancels the forwarded one; the deadline travels with it.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import trio

from ..api import Method
from ..errors import ErrorCode, SpearError
from ..model import ExecutionMode, InvocationType, InvokeRequest
from ..protocol.connection import Connection
from ..protocol.handshake import Authenticator, token_authenticator
from ..protocol.messages import Hello
from ..protocol.serving import Deferred, IncomingRequest
from .ids import execution_owner, id_owner, new_execution_id, new_task_id
from .invoke_fields import parse_invoke, routing_fields
from .peers import PeerPool
from .placement import place_task
from .records import NodeInfo, TaskEntry
from .registry import ClusterRegistry
from .view import ClusterView

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["NOT_ROUTED", "ClusterRouter", "peer_or_client_authenticator"]

NOT_ROUTED: Final[Any] = object()
"""What :meth:`ClusterRouter.call` answers for a call the node serves as usual."""

_BY_EXECUTION: Final = frozenset({"get_execution", "wait_execution", "cancel_execution"})
_BY_TASK: Final = frozenset({"get_task", "delete_task", "issue_agent_secret"})
_STREAM_WINDOW: Final = 16
_LOOKUP_TIMEOUT: Final = 2.0
"""Seconds a cluster-wide lookup of a client-chosen execution id may take at most."""
_LOOKUP_FAN_OUT: Final = 16
"""Peers asked at once by such a lookup (a larger cluster is asked in turns)."""
_WATCH_LOOKUPS: Final = 16
"""Client-chosen ids of one watch looked up in the cluster; further ones are watched here."""


class ClusterRouter:
    """Decides, per call, whether this node serves it or its owner does, and forwards."""

    def __init__(self, node: Node, registry: ClusterRegistry, view: ClusterView, peers: PeerPool) -> None:
        self.node = node
        self.node_id = node.config.node_id
        self.registry = registry
        self.view = view
        self.peers = peers
        self._created: set[str] = set()  # owned names whose task exists here
        self._execution_prefix = new_execution_id(self.node_id).rsplit("-", 1)[0] + "-"  # "<node>:exec-"

    # -- invoke / stream_function ------------------------------------------------------
    async def invoke(self, method: Method, incoming: IncomingRequest) -> Any:
        """Serve or forward an invocation (*incoming* is the client's request).

        Routing reads only what it needs from the client's params (the kind of call,
        the task's id or name, the function's name: :func:`_routing_fields`); a call
        that goes to another node is relayed as it came, and its owner parses and
        validates it in full. A call served here is parsed here."""
        fields = routing_fields(incoming.params)
        if fields is None:  # another spelling, or a bad field: parsing accepts it or says why
            request = parse_invoke(incoming.params)
            existing = request.invocation_type is InvocationType.EXISTING_TASK
            task = request.task_id if existing else request.task_name
        else:
            existing, task = fields
        from_peer = _from_peer(incoming)
        if existing:
            owner = self._task_owner(task)
            if owner is None or owner == self.node_id or from_peer:
                return await self._run_local(parse_invoke(incoming.params), incoming, deferred=True)
            return await self._forward(self._live_owner(owner, task), method, incoming)
        owned = self.registry.owned_task(task)
        if owned is not None:
            return await self._run_owned(parse_invoke(incoming.params), owned, incoming)
        if not from_peer:
            entry = self.view.task(task)
            if entry is not None and entry.owner != self.node_id and self.view.node(entry.owner) is not None:
                return await self._forward(self._live_owner(entry.owner, task), method, incoming)
            target = place_task(self._local_info(), self.view.nodes())
            if target.node_id != self.node_id:
                return await self._forward(target, method, incoming)
        return await self._claim_and_run(method, parse_invoke(incoming.params), incoming)

    async def _claim_and_run(self, method: Method, request: InvokeRequest, incoming: IncomingRequest) -> Any:
        """Claim the new task's name (the transaction decides who creates it), then
        create and run it here, or forward to the node that won the name."""
        name = request.task_name
        local_id = await self._local_task_id(name)
        claim = await self.registry.claim_task(name, local_id or new_task_id(self.node_id))
        if claim.entry.owner != self.node_id:
            if _from_peer(incoming) and incoming.connection.peer.peer_id == claim.entry.owner:
                raise SpearError(
                    ErrorCode.UNAVAILABLE,
                    f"task {name!r} is claimed by node {claim.entry.owner}; retry",
                    {"owner": claim.entry.owner},
                )
            return await self._forward(self._live_owner(claim.entry.owner, name), method, incoming)
        return await self._run_owned(request, claim.entry, incoming)

    async def _run_owned(self, request: InvokeRequest, entry: TaskEntry, incoming: IncomingRequest) -> Any:
        """Run a NEW_TASK call for a name this node owns. Until the task is known to
        exist here it is created under the claimed id (EXISTING_TASK with
        create_if_not_exists: concurrent first calls make it once); after, the call
        goes as it came (so an artifact change is checked as on a lone node)."""
        name = entry.task_name
        if name in self._created:
            return await self._run_local(request, incoming, deferred=True)
        created = dataclasses.replace(
            request,
            invocation_type=InvocationType.EXISTING_TASK,
            task_id=entry.task_id,
            create_if_not_exists=True,
        )
        try:
            answer = await self._run_local(created, incoming)
        except SpearError as exc:
            never_made = exc.code in (ErrorCode.INVALID_ARGUMENT, ErrorCode.NOT_FOUND, ErrorCode.PERMISSION_DENIED)
            if never_made and await self._local_task_id(name) is None:  # free the name
                await _quietly(self.registry.release_task(name))
            raise
        self._created.add(name)
        return answer

    async def _run_local(self, request: InvokeRequest, incoming: IncomingRequest, *, deferred: bool = False) -> Any:
        """Serve the call here. *deferred*: a SYNC unary call is answered as on a lone
        node, with no task waiting for it (not while its task may still be created
        here: the creation's failure must reach :meth:`_run_owned` as an error)."""
        if not request.context.execution_id:
            request.context.execution_id = f"{self._execution_prefix}{uuid.uuid4().hex}"
        if incoming.is_stream:
            return await self.node.invoke_request(request, incoming.send_item)
        if deferred and request.execution_mode is ExecutionMode.SYNC:
            return await self.node.invoke_deferred(request, incoming.defer())
        return await self.node.invoke_request(request)

    # -- the other methods ---------------------------------------------------------------
    async def call(self, method: Method, args: Mapping[str, Any], incoming: IncomingRequest) -> Any:
        """Serve *method* (its validated *args*) from the cluster, forward it, or
        answer :data:`NOT_ROUTED` for the node to serve it as usual."""
        name = method.name
        if name in ("list_tasks", "get_health"):
            if args.get("scope") == "cluster":
                return await (self._cluster_tasks(args) if name == "list_tasks" else self._cluster_health())
            if name == "get_health":
                health = await self.node.get_health()
                health["cluster"] = self.registry.status().to_dict()
                return health
            return NOT_ROUTED
        if _from_peer(incoming):
            return NOT_ROUTED
        if name in _BY_EXECUTION:
            owner = execution_owner(args["execution_id"])
            if owner is None:
                return await self._unnamed_execution(method, args, incoming)
            if owner == self.node_id:
                return NOT_ROUTED
            return await self._forward(self._live_owner(owner, args["execution_id"]), method, incoming)
        if name in _BY_TASK:
            owner = self._task_owner(args["task_id"])
            if owner is None or owner == self.node_id:
                if name == "delete_task":
                    return await self._delete_local(args)
                return NOT_ROUTED
            return await self._forward(self._live_owner(owner, args["task_id"]), method, incoming)
        if name == "watch_executions":
            return await self._watch(method, args["execution_ids"], incoming)
        return NOT_ROUTED

    async def _delete_local(self, args: Mapping[str, Any]) -> Any:
        result = await self.node.delete_task(**args)
        for entry in self.registry.owned_tasks():
            if entry.task_id == result.get("task_id") or entry.task_name == args["task_id"]:
                self._created.discard(entry.task_name)
                await _quietly(self.registry.release_task(entry.task_name))
        return result

    async def _watch(self, method: Method, execution_ids: list[str], incoming: IncomingRequest) -> Any:
        """Split the ids by owner: this node's watched here, the others' at their owners,
        every record passed on as it comes."""
        by_owner: dict[str, list[str]] = {}
        lookups = 0
        for execution_id in execution_ids:
            owner = execution_owner(execution_id)
            if owner is None and lookups < _WATCH_LOOKUPS and self._has_peers():
                lookups += 1
                owner = await self._holder_of(execution_id, incoming)
            key = self.node_id if owner is None else owner
            by_owner.setdefault(key, []).append(execution_id)
        if set(by_owner) == {self.node_id}:
            return NOT_ROUTED
        # every owner must be live before anything is watched: one answer, not a partial one
        peers = {owner: self._live_owner(owner, ids[0]) for owner, ids in by_owner.items() if owner != self.node_id}
        count = 0
        failure: SpearError | None = None

        async def watch(owner: str, ids: list[str], scope: trio.CancelScope) -> None:
            nonlocal count, failure
            try:
                if owner == self.node_id:
                    answer = await self.node.watch_executions(ids, incoming.send_item)
                    count += int(answer.get("count", len(ids)))
                    return
                connection = await self.peers.connection(peers[owner])
                async with connection.stream(
                    method.name, {"execution_ids": ids}, window=len(ids), timeout=_timeout(incoming)
                ) as items:
                    async for item in items:
                        await incoming.send_item(item)
                    count += int((items.result or {}).get("count", len(ids)))
            except SpearError as exc:
                failure = failure or exc
                scope.cancel()

        async with trio.open_nursery() as nursery:
            for owner, ids in by_owner.items():
                nursery.start_soon(watch, owner, ids, nursery.cancel_scope)
        if failure is not None:
            raise failure
        return {"count": count}

    # -- execution ids chosen by clients ------------------------------------------------
    async def _unnamed_execution(self, method: Method, args: Mapping[str, Any], incoming: IncomingRequest) -> Any:
        """get/wait/cancel of an execution id that names no node (a client chose it):
        served here if this node knows it, else by the live node that does (see
        :meth:`_find_execution`), else this node's NOT_FOUND."""
        try:
            return await getattr(self.node, method.node_method)(**args)
        except SpearError as exc:
            if exc.code is not ErrorCode.NOT_FOUND or not self._has_peers():
                raise
            missing = exc
        holder = await self._find_execution(args["execution_id"], incoming)
        if holder is None:
            raise missing
        return await self._forward(holder, method, incoming)

    async def _holder_of(self, execution_id: str, incoming: IncomingRequest) -> str | None:
        """The node holding the client-chosen *execution_id*: this one, another live
        one, or None (unknown: this node answers for it)."""
        try:
            await self.node.get_execution(execution_id, include_result=False)
            return self.node_id
        except SpearError as exc:
            if exc.code is not ErrorCode.NOT_FOUND:
                raise
        holder = await self._find_execution(execution_id, incoming)
        return None if holder is None else holder.node_id

    def _has_peers(self) -> bool:
        return any(node.node_id != self.node_id for node in self.view.nodes())

    async def _find_execution(self, execution_id: str, incoming: IncomingRequest) -> NodeInfo | None:
        """Ask the live peers (at most :data:`_LOOKUP_FAN_OUT` at once, within
        :data:`_LOOKUP_TIMEOUT` or the call's deadline) which one has *execution_id*.
        None when none has it; UNAVAILABLE naming the peers that could not be asked
        when none that answered has it."""
        peers = sorted((n for n in self.view.nodes() if n.node_id != self.node_id), key=lambda n: n.node_id)
        left = _timeout(incoming)
        limiter = trio.CapacityLimiter(_LOOKUP_FAN_OUT)
        found: NodeInfo | None = None
        answered: set[str] = set()

        async def ask(node: NodeInfo, done: trio.CancelScope) -> None:
            nonlocal found
            async with limiter:
                try:
                    connection = await self.peers.connection(node)
                    await connection.request("get_execution", {"execution_id": execution_id, "include_result": False})
                except SpearError as exc:
                    if exc.code is ErrorCode.NOT_FOUND:
                        answered.add(node.node_id)
                    return
            found = found or node
            done.cancel()

        with trio.move_on_after(min(_LOOKUP_TIMEOUT, left if left is not None else _LOOKUP_TIMEOUT)):
            async with trio.open_nursery() as nursery:
                for node in peers:
                    nursery.start_soon(ask, node, nursery.cancel_scope)
        if found is None and len(answered) < len(peers):
            silent = [n.node_id for n in peers if n.node_id not in answered]
            raise SpearError(
                ErrorCode.UNAVAILABLE,
                f"execution {execution_id[:200]!r} is not on this node, nor on the nodes that answered; "
                f"not asked (unreachable or too slow): {', '.join(silent[:10])}",
                {"execution_id": execution_id[:200], "unreachable": silent[:10]},
            )
        return found

    # -- cluster views -------------------------------------------------------------------
    async def _cluster_tasks(self, args: Mapping[str, Any]) -> dict[str, Any]:
        prefix, limit, start_after = args.get("prefix", ""), args.get("limit", 100), args.get("start_after", "")
        alive = {node.node_id for node in self.view.nodes()}
        entries = sorted(
            (e for e in self.view.tasks() if e.task_name.startswith(prefix) and e.task_name > start_after),
            key=lambda e: e.task_name,
        )
        page = entries[:limit]
        tasks = [{**entry.to_dict(), "owner_alive": entry.owner in alive} for entry in page]
        return {
            "tasks": tasks,
            "next_start_after": page[-1].task_name if len(entries) > limit else "",
            "view_fresh": self.view.fresh,
        }

    async def _cluster_health(self) -> dict[str, Any]:
        health = await self.node.get_health()
        health["cluster"] = self.registry.status().to_dict()
        health["nodes"] = [node.to_dict() for node in sorted(self.view.nodes(), key=lambda n: n.node_id)]
        health["view_fresh"] = self.view.fresh
        if self.view.last_error:
            health["view_error"] = self.view.last_error
        return health

    # -- helpers -------------------------------------------------------------------------
    def _local_info(self) -> NodeInfo:
        return self.view.node(self.node_id) or NodeInfo(node_id=self.node_id, capacity=1)

    def _task_owner(self, task: str) -> str | None:
        """The node owning the task with id (or name) *task*, or None: ask locally."""
        entry: TaskEntry | None = self.view.task_by_id(task) or self.view.task(task)
        if entry is not None:
            return entry.owner
        return id_owner(task)

    def _live_owner(self, owner: str, what: str) -> NodeInfo:
        """The live node *owner*, or UNAVAILABLE naming the lost owner of *what*."""
        node = self.view.node(owner)
        if node is None:
            raise SpearError(
                ErrorCode.UNAVAILABLE,
                f"{what!r} is owned by node {owner}, which is not in the cluster (lost); "
                "a NEW_TASK call re-creates a lost task on a live node",
                {"owner": owner, "lost_owner": owner},
            )
        return node

    async def _local_task_id(self, name: str) -> str | None:
        """The id of this node's task named *name* (e.g. declared in its config, or
        made before it joined), or None."""
        page = await self.node.list_tasks(prefix=name, limit=1)
        for task in page["tasks"]:
            if task.get("task_name") == name and isinstance(task.get("task_id"), str):
                return str(task["task_id"])
        return None

    async def _forward(self, owner: NodeInfo, method: Method, incoming: IncomingRequest) -> Any:
        """Send the client's call as it came to *owner*; its answer (or error) is ours."""
        connection = await self.peers.connection(owner)
        timeout = _timeout(incoming)
        if incoming.is_stream:
            async with connection.stream(method.name, incoming.params, window=_STREAM_WINDOW, timeout=timeout) as items:
                async for item in items:
                    await incoming.send_item(item)
                return items.result
        # relayed: the peer connection's reader hands the owner's answer straight to
        # the client's connection; no task waits here (the deferred answer keeps the
        # client's request in service, and its cancel, deadline or connection loss
        # give the owner's call up)
        deferred = incoming.defer()
        on_answer = _relay_answer(deferred, connection, owner.node_id)
        call = await connection.relay(method.name, incoming.params, on_answer, timeout=timeout)
        deferred.on_give_up = call.give_up
        return deferred


def peer_or_client_authenticator(client_token: str, cluster_token: str) -> Authenticator:
    """Accept a client hello with the node's token, or a node hello (role ``node``)
    with the cluster token (constant-time compares)."""
    for_clients = token_authenticator(client_token)
    for_nodes = token_authenticator(cluster_token)

    async def authenticate(hello: Hello) -> str:
        if hello.role == "node":
            return str(await for_nodes(hello))
        return str(await for_clients(hello))

    return authenticate


def _from_peer(incoming: IncomingRequest) -> bool:
    peer = getattr(incoming.connection, "peer", None)
    return getattr(peer, "role", None) == "node"


def _relay_answer(deferred: Deferred, connection: Connection, owner: str) -> Callable[[Any, SpearError | None], None]:
    """The callback that gives the owner's answer to the client's request (the loss
    of the peer connection named as the owner's)."""

    def on_answer(result: Any, error: SpearError | None) -> None:
        if error is None:
            deferred.answer(result)
        elif connection.closed and error.code is ErrorCode.UNAVAILABLE:
            deferred.fail(
                SpearError(
                    ErrorCode.UNAVAILABLE,
                    f"lost the connection to node {owner}, which owns this call, mid-call: {error.message}",
                    {"owner": owner},
                )
            )
        else:
            deferred.fail(error)

    return on_answer


def _timeout(incoming: IncomingRequest) -> float | None:
    """What is left of the client's deadline (it travels on with the forwarded call)."""
    deadline = incoming.cancel_scope.deadline
    if deadline == float("inf"):
        return None
    return max(0.001, deadline - trio.current_time())


async def _quietly(call: Any) -> None:
    try:
        await call
    except SpearError:
        pass
