"""The daemon's link to the engine: connections, round trips, errors.

redis-py does what a client library must on the way in (the URL's
authentication, a Cluster's topology) and carries TLS; the commands of a
batch go over connections of the link's own (``sessiond.shared.wire``), in
one round trip each (``call``), without a client layer, which would cost
more per command than the round trip itself. A call takes a free
connection without waiting for anything; only when every one of
``MAX_CONNECTIONS`` is busy does it wait its turn. Every key of a
namespace is in one hash slot, so all of them live on one node: a Cluster
is detected from the node the URL names, and the link talks to the master
that holds the slot, following it when the Cluster moves it.

Each round trip has a deadline (``TIMEOUT``): an engine that does not answer
in time is as good as gone, and is said to be (``BackendUnavailable``,
naming the engine without its password), unless what was sent may have
been applied (``OutcomeUnknown``). Refusals to write (a read-only replica,
out of memory, a failed save) become ``ReadOnly`` with the engine's reason;
any other error the engine answers (a key of ours changed by hand to the
wrong type: WRONGTYPE) becomes ``InternalError`` with the engine's text,
naming the key where it can (``kinds``): redis-py's own exceptions never
leave the link, so that every part of the daemon that handles a
``SessionError`` (a request, the expiry timer, the stream reader) handles
what the engine's content makes it answer.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import anyio
from redis import exceptions as rx
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sessiond.errors import (
    BackendUnavailable,
    EngineError,
    OutcomeUnknown,
    ReadOnly,
    SessionError,
)
from sessiond.shared.url import Backend
from sessiond.shared.wire import Borrowed, Command, Lean, NotSent, pack

Connected = Lean | Borrowed

log = logging.getLogger("sessiond.shared")

TIMEOUT = 2.0
# Round trips at once (and so connections to the engine): a thousand clients
# take turns on these rather than open a thousand connections.
MAX_CONNECTIONS = 16
# Refusals to write, as redis-py names them: the engine's reason is passed on.
_REFUSALS = (rx.ReadOnlyError, rx.OutOfMemoryError, rx.MasterDownError)
# A Cluster moving the namespace's slot between nodes answers TRYAGAIN to
# a command on keys split between them (a script's, or any on a key not
# created yet), and one that lost a node CLUSTERDOWN to every command
# until a replica takes its place: it is sent again after this pause, for
# as long as TIMEOUT.
TRYAGAIN_PAUSE = 0.05
# What an ACL user of the daemon's needs (the README's words).
_NEEDS = "the user needs the commands of +@all on the keys ~sd:*"
# What the engine adds to an error raised inside a script.
_IN_SCRIPT = re.compile(r"\s*script: \w+, on @user_script:\d+\.?\s*$")


class Link:
    """Connections to the engine's node that holds ``slot_key``'s slot."""

    def __init__(self, backend: Backend, slot_key: str) -> None:
        self.backend = backend
        self.slot_key = slot_key
        self.cluster = False
        # Where the namespace's node is: a Unix socket's path, or host and
        # port; redis-py's connection for TLS (``_kwargs``).
        self._path = ""
        self._host = ""
        self._port = 0
        self._located = False
        # Bumped at each locate: a connection taken before it, to the node
        # that held the slot then, is closed rather than kept.
        self._generation = 0
        self._locating = asyncio.Lock()
        # The Cluster's nodes as last seen (host, port): where the next
        # locate asks, besides the URL's node, which may be the one that died.
        self._nodes: list[tuple[str, int]] = []
        self._kwargs: dict[str, Any] = {}
        self._class: type[AbstractConnection] = Connection
        self._idle: list[Connected] = []
        # Turns: a connection each, at most MAX_CONNECTIONS; a call that
        # finds none free waits for one handed back (``_waiting``).
        self._free = MAX_CONNECTIONS
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._scripts: dict[bytes, bytes] = {}  # sha -> source, to load again
        self.last_error: str | None = None
        # Why the engine refused the last write sent (``None``: it took it,
        # or none was refused): what ``stats`` shows as read only. Known
        # from the writes themselves, as the local journal's read-only mode
        # is: no probe that writes.
        self.refusing: str | None = None
        self.node = backend.shown
        # The replicas setting: writes wait for this many replicas (WAIT).
        self.replicas = 0
        self.replicas_timeout = 1.0
        # The type each key of ours holds (as TYPE names it; ``None``: not
        # ours), which the store that names the keys sets: a key of
        # another type in a command the engine refused is named.
        self.kinds: Callable[[str], str | None] = _unknown_kind

    # -- finding the node --------------------------------------------------

    async def locate(self) -> None:
        """Find the node that holds the namespace (the URL's, or in a
        Cluster the master of its slot). Raises ``BackendUnavailable``."""
        try:
            if self.cluster:
                # Found again (the slot's node died or moved): the URL's
                # node may be the one that died; the Cluster's others say.
                await self._locate_in_cluster()
            else:
                await self._probe()
        except (rx.RedisError, rx.RedisClusterException, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from exc
        self._located = True
        self._generation += 1
        await self._drop_idle()

    async def _probe(self) -> None:
        """Whether the URL's node is a Cluster's; if not, it is the node."""
        b = self.backend
        # RESP2: replies of one shape whatever redis-py's default (the
        # readers here take RESP3's too).
        probe = Redis(**b.client_kwargs(), socket_timeout=TIMEOUT,
                      socket_connect_timeout=TIMEOUT, protocol=2, retry=_no_retry())
        try:
            with anyio.fail_after(TIMEOUT * 2):
                info = await probe.info("cluster")
            self.cluster = bool(info.get("cluster_enabled"))
            if not self.cluster:
                pool = probe.connection_pool
                self._class = pool.connection_class
                self._kwargs = dict(pool.connection_kwargs, retry=_no_retry())
                self._path, self._host, self._port = b.path, b.host, b.port
                self.node = b.shown
            else:
                await self._locate_in_cluster()
        finally:
            await probe.aclose()

    async def _locate_in_cluster(self) -> None:
        """The master that holds the slot, as the Cluster's nodes say: the
        URL's asked first at start; later the nodes last seen first and the
        one the link used last, and the URL's, after them (either may be a
        master that died, whose replica took over its slots)."""
        b = self.backend
        used = (self._host, self._port)
        asked = [n for n in self._nodes if n != used] + [used, (b.host, b.port)]
        startup = [ClusterNode(h, p) for h, p in dict.fromkeys(asked) if h]
        cluster = RedisCluster(
            startup_nodes=startup, password=b.password, username=b.username,
            ssl=b.tls, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT,
            protocol=2,
        )
        try:
            with anyio.fail_after(TIMEOUT * 2):
                await cluster.initialize()
            node = cluster.get_node_from_key(self.slot_key)
            if node is None:
                raise rx.ClusterDownError(f"no node holds the slot of {self.slot_key}")
            self._nodes = [(n.host, int(n.port)) for n in cluster.get_nodes()]
            self._class = node.connection_class
            self._kwargs = dict(node.connection_kwargs, retry=_no_retry())
            where = f"{b.scheme}://{node.host}:{node.port} (cluster)"
            if self._host and where != self.node:
                log.info("the namespace's slot is now served by %s (was %s)", where, self.node)
            self._path, self._host, self._port = "", node.host, int(node.port)
            self.node = where
        finally:
            await cluster.aclose()

    # -- round trips -------------------------------------------------------

    async def call(
        self, commands: Sequence[Command], *, writes: bool = False, replicas: int | None = None,
    ) -> list[Any]:
        """Send ``commands`` in one round trip and return their replies in
        order; an error reply is returned as an ``InternalError`` with the
        engine's text (the caller decides), but for those below. Raises
        ``BackendUnavailable`` (nothing
        was applied), ``OutcomeUnknown`` (``writes``, and the engine may
        have applied them, or applied them and fewer replicas than
        ``replicas`` have them), ``ReadOnly`` (the engine refuses writes).
        ``replicas`` (a count) waits for that many rather than the setting's."""
        # The setting as the call is made: one changed while it waits (by
        # another daemon, or this one's reload) is for later calls.
        asked = (self.replicas if replicas is None else replicas, self.replicas_timeout)
        waiting = writes and asked[0] > 0
        sent, within = commands, TIMEOUT
        if waiting:
            # In the same round trip: WAIT answers once the replicas have
            # every write this connection made, the commands above included.
            sent = [*commands, _wait(asked)]
            within += asked[1]
        until = asyncio.get_running_loop().time() + TIMEOUT
        moved = missing = 0
        demoted = False
        while True:
            replies = await self._round_trip(sent, writes, within)
            waited = replies.pop() if waiting else None
            errors = [r for r in replies if isinstance(r, rx.ResponseError)]
            # Looked for among the errors alone: a batch's replies are
            # walked once when none is one (every request's path).
            if errors and any(isinstance(e, rx.AskError) and not isinstance(e, rx.MovedError)
                              for e in errors):
                waited = await self._follow_asks(commands, replies, writes, within, waited,
                                                 asked)
                errors = [r for r in replies if isinstance(r, rx.ResponseError)]
            if not errors:
                if writes:
                    self.refusing = None
                if waiting:
                    self._check_replicas(waited, asked)
                return replies
            # Sent again only if nothing of it ran that wrote: an error
            # below means its command was not run.
            again = not writes_done(commands, replies)
            if again and moved < 3 and any(_elsewhere(e) for e in errors):
                # The Cluster moved the slot (MOVED), or its node became a
                # replica under a blocked read (UNBLOCKED): nothing was
                # done there. Three times at most: the slot moving on
                # meanwhile, or nodes that do not agree yet.
                moved += 1
                to = next((e for e in errors if isinstance(e, rx.MovedError)), None)
                if to is not None:
                    # The node that answered knows where the slot is now:
                    # the others may not have heard yet.
                    await self._moved_to(*to.node_addr)
                else:
                    await self._relocate()
                continue
            if again and not demoted and any(isinstance(e, rx.ReadOnlyError) for e in errors):
                # A replica now (a failover behind a name that moved to the
                # new primary, as managed engines do): connections made
                # from now on reach whatever the name says, once.
                demoted = True
                self._generation += 1
                await self._drop_idle()
                continue
            if again and missing < 2 and any(isinstance(e, rx.NoScriptError) for e in errors):
                # The engine forgot the scripts (a restart, SCRIPT FLUSH), or
                # the slot is on a node that never had them.
                missing += 1
                await self._load_scripts()
                continue
            wait = next((e for e in errors if isinstance(e, _WAIT)), None)
            if wait is not None and again:
                if asyncio.get_running_loop().time() < until:
                    await asyncio.sleep(TRYAGAIN_PAUSE)
                    continue
                if isinstance(wait, rx.TryAgainError):
                    raise BackendUnavailable(
                        f"the shared engine {self.node} is moving the namespace's slot to "
                        f"another node, and refused this request meanwhile (TRYAGAIN) for "
                        f"{TIMEOUT:g}s: nothing of it was done; try again"
                    )
                self.last_error = f"the Cluster is down (CLUSTERDOWN {_reason(wait)})"
                raise BackendUnavailable(
                    f"the shared engine {self.node} cannot serve: {self.last_error}; "
                    f"nothing of this request was done"
                )
            for e in errors:
                if _refuses_writes(e):
                    self.refusing = f"the shared engine {self.node} refuses writes: {_reason(e)}"
                    raise ReadOnly(self.refusing)
            if waiting:
                self._check_replicas(waited, asked)
            return await self._ours(commands, replies)

    async def _follow_asks(
        self, commands: Sequence[Command], replies: list[Any], writes: bool, within: float,
        waited: Any, wanted: tuple[int, float],
    ) -> Any:
        """Send the commands the engine answered ASK (the Cluster is moving
        the namespace's slot, and their keys are on the node it moves to)
        to that node, each after ASKING, as redis-py's Cluster client
        does; their replies take the ASKs' places in ``replies``. A script
        goes as EVAL: that node may not have it. Returns WAIT's answer for
        the writes made there (or ``waited``, none were)."""
        asked = [i for i, r in enumerate(replies)
                 if isinstance(r, rx.AskError) and not isinstance(r, rx.MovedError)]
        host, port = replies[asked[0]].node_addr
        sent: list[Command] = []
        for i in asked:
            command = commands[i]
            source = self._scripts.get(_bytes(command[1])) if command[0] == "EVALSHA" else None
            sent += [("ASKING",), command if source is None else ("EVAL", source, *command[2:])]
        waiting = waited is not None
        if waiting:
            sent.append(_wait(wanted))
        conn = await self._open(host, int(port), "")
        try:
            got = await conn.exchange(pack(sent), len(sent), within)
        except (rx.ConnectionError, rx.TimeoutError, OSError, TimeoutError) as exc:
            if writes:
                raise OutcomeUnknown(
                    f"the shared engine {host}:{port} (the node the namespace's slot is moving "
                    f"to) stopped answering after the change was sent ({_why(exc)}): it may or "
                    f"may not have been made; read the session to see"
                ) from exc
            raise self._unavailable(exc) from exc
        finally:
            await conn.aclose()
        for n, i in enumerate(asked):
            replies[i] = got[2 * n + 1]
        if waiting:
            there = got[-1]
            if isinstance(there, rx.ResponseError) or isinstance(waited, rx.ResponseError):
                return there if isinstance(there, rx.ResponseError) else waited
            return min(int(there), int(waited))
        return waited

    async def _ours(self, commands: Sequence[Command], replies: list[Any]) -> list[Any]:
        """``replies`` with each error the engine answered as an
        ``InternalError``: its text, and for WRONGTYPE the keys of the
        command that hold another type than ours do (one more round trip,
        on this path only)."""
        out: list[Any] = []
        for command, reply in zip(commands, replies, strict=True):
            if isinstance(reply, rx.ResponseError):
                text = _reason(reply)
                if text.startswith("WRONGTYPE"):
                    text += await self._wrong_types(command)
                elif isinstance(reply, rx.NoPermissionError):
                    text += f" (NOPERM: {_NEEDS})"
                reply = EngineError(
                    f"the shared engine {self.node} answered an error: {text}", _reason(reply)
                )
            out.append(reply)
        return out

    async def _wrong_types(self, command: Command) -> str:
        """Which keys of ``command`` hold another type than ours do, in
        words to follow the engine's error ("": none it can tell)."""
        keys = [k for k in _keys(command) if self.kinds(k) is not None]
        if not keys:
            return ""
        try:
            types = await self._round_trip([("TYPE", k) for k in keys], False, TIMEOUT)
        except SessionError:
            return ""  # the engine went away meanwhile: its error is said as it was
        wrong = [
            f"{key} holds a {_decoded(held)} where sessiond keeps a {self.kinds(key)}"
            for key, held in zip(keys, types, strict=True)
            if isinstance(held, (bytes, str)) and _decoded(held) not in (self.kinds(key), "none")
        ]
        if not wrong:
            return ""
        return f" ({'; '.join(wrong)}: changed outside sessiond)"

    def _check_replicas(self, reply: Any, asked: tuple[int, float]) -> None:
        """WAIT's answer: how many replicas have the writes (or why the
        engine would not say), against the ``asked`` replicas and timeout."""
        if isinstance(reply, rx.ResponseError):
            raise OutcomeUnknown(
                f"the change was sent to the shared engine {self.node}, which would not say "
                f"how many replicas have it ({_reason(reply)}); read the session to see"
            )
        have = int(reply)
        if have < asked[0]:
            raise OutcomeUnknown(
                f"the change was made on the shared engine {self.node}, but only {have} of "
                f"the {asked[0]} replicas the replicas setting asks for had it within "
                f"{asked[1]:g}s: a failover now could lose it"
            )

    async def _round_trip(
        self, commands: Sequence[Command], writes: bool, within: float
    ) -> list[Any]:
        if self._free > 0 and not self._waiting:
            self._free -= 1  # a turn at once: no wait on the way
        else:
            await self._turn()
        try:
            for fresh in (False, True):
                try:
                    conn, reused = await self._connection(new=fresh)
                except BackendUnavailable:
                    if self.cluster:
                        # The node died (refused, silent): a replica may
                        # take over its slots, which the next call looks for.
                        await self._relocate()
                    raise
                generation = self._generation
                try:
                    replies = await conn.exchange(pack(commands), len(commands), within)
                except BaseException as exc:
                    # Whatever went wrong, the connection may be out of step.
                    await conn.aclose()
                    if not isinstance(exc, _LOST):
                        raise
                    if reused and not fresh and (isinstance(exc, NotSent)
                                                 or (not writes and _closed(exc))):
                        # An idle connection the engine closed (CLIENT KILL,
                        # its timeout): sent again on a new one, a read, or
                        # a change it never got.
                        continue
                    if self.cluster:
                        # The node may have died and a replica taken over.
                        await self._relocate()
                    if writes and not isinstance(exc, NotSent):
                        # Written: the engine may have applied it.
                        raise OutcomeUnknown(
                            f"the shared engine {self.node} stopped answering after the "
                            f"change was sent ({_why(exc)}): it may or may not have been "
                            f"made; read the session to see"
                        ) from exc
                    raise self._unavailable(exc) from exc
                refused = next((r for r in replies if isinstance(r, rx.ConnectionError)), None)
                if refused is not None:
                    # The engine refused the connection itself (maxclients,
                    # LOADING a dataset): it ran none of the commands.
                    await conn.aclose()
                    raise self._unavailable(refused)
                if generation == self._generation:
                    self._idle.append(conn)
                else:
                    await conn.aclose()  # to the node that held the slot before
                break
        finally:
            self._hand_back()
        self.last_error = None
        return replies

    async def _turn(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._hand_back()  # handed a turn as it was cancelled: pass it on
            elif waiter in self._waiting:  # (``_hand_back`` drops cancelled ones)
                self._waiting.remove(waiter)
            raise

    def _hand_back(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    async def _connection(self, new: bool = False) -> tuple[Connected, bool]:
        """An idle connection that is still open (unless ``new``), or a new
        one; and whether it was idle."""
        while self._idle and not new:
            conn = self._idle.pop()
            if conn.sendable():
                return conn, True
            await conn.aclose()
        if not self._located:
            async with self._locating:
                if not self._located:  # (another call may have located it)
                    await self.locate()
        return await self._open(self._host, self._port, self._path), False

    async def _open(self, host: str, port: int, path: str) -> Connected:
        """A new connection to the node at ``path`` or ``host:port``.
        Raises ``BackendUnavailable``."""
        try:
            if self.backend.tls:
                borrowed = self._class(**{**self._kwargs, "host": host, "port": port})
                try:
                    with anyio.fail_after(TIMEOUT):
                        await borrowed.connect()  # type: ignore[no-untyped-call]
                except BaseException:
                    await borrowed.disconnect()
                    raise
                return Borrowed(borrowed)
            lean = await Lean.open(host, port, path, TIMEOUT)
            try:
                await self._hello(lean)
            except BaseException:
                await lean.aclose()
                raise
            return lean
        except (rx.RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from exc

    async def _hello(self, conn: Lean) -> None:
        """Authenticate and choose the database, as redis-py would at connect."""
        b = self.backend
        commands: list[Command] = []
        if b.password is not None:
            who = [b.username] if b.username else []
            commands.append(("AUTH", *who, b.password))
        if b.db and not self.cluster:
            commands.append(("SELECT", b.db))
        if not commands:
            return
        replies = await conn.exchange(pack(commands), len(commands), TIMEOUT)
        for command, reply in zip(commands, replies, strict=True):
            if isinstance(reply, rx.ConnectionError):
                raise reply  # maxclients reached, LOADING: in the engine's words
            if isinstance(reply, rx.ResponseError):
                if command[0] == "AUTH" and not isinstance(reply, rx.AuthenticationError):
                    raise rx.AuthenticationError(str(reply)) from reply
                raise reply

    def _unavailable(self, exc: BaseException) -> SessionError:
        if isinstance(exc, (rx.AuthenticationError, rx.AuthorizationError)):
            self.last_error = f"authentication refused: {exc}"
        elif isinstance(exc, rx.NoPermissionError):
            # Reached, and refused by its ACL (INFO or CLUSTER SLOTS, as it
            # is found): not a trouble of the network.
            self.last_error = f"its ACL refuses this daemon's user: {exc} ({_NEEDS})"
            return BackendUnavailable(f"the shared engine {self.node} {self.last_error}")
        elif isinstance(exc, rx.RedisClusterException):
            # redis-py's words for any node that would not answer CLUSTER
            # SLOTS, an ACL's refusal included ("Cluster mode is not
            # enabled"): where to look is said with them.
            self.last_error = (f"no node of the Cluster said which holds the namespace's slot "
                               f"(CLUSTER SLOTS): {exc} (if they live, {_NEEDS}, CLUSTER "
                               f"among them)")
        else:
            self.last_error = _why(exc)
        return BackendUnavailable(
            f"the shared engine {self.node} cannot be reached: {self.last_error}"
        )

    async def _moved_to(self, host: str, port: int) -> None:
        """The slot's node is ``host:port`` (a MOVED said so)."""
        if (host, int(port)) == (self._host, self._port) and self._located:
            return  # another call heard it first
        where = f"{self.backend.scheme}://{host}:{port} (cluster)"
        log.info("the namespace's slot is now served by %s (was %s)", where, self.node)
        self._path, self._host, self._port, self.node = "", host, int(port), where
        self._located = True
        self._generation += 1
        await self._drop_idle()

    async def _relocate(self) -> None:
        """Have the next round trip find the slot's node again (and the
        connections in use now closed once done)."""
        self._located = False
        self._generation += 1
        await self._drop_idle()

    async def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.aclose()

    async def close(self) -> None:
        await self._drop_idle()

    # -- scripts -----------------------------------------------------------

    def script(self, source: str) -> bytes:
        """The sha of ``source``, which ``call`` loads again when the engine
        has forgotten it (a restart, SCRIPT FLUSH)."""
        import hashlib

        sha = hashlib.sha1(source.encode()).hexdigest().encode()
        self._scripts[sha] = source.encode()
        return sha

    async def _load_scripts(self) -> None:
        await self._round_trip(
            [("SCRIPT", "LOAD", s) for s in self._scripts.values()], False, TIMEOUT
        )


def _wait(asked: tuple[int, float]) -> Command:
    """WAIT for ``asked``: so many replicas, within so many seconds."""
    return ("WAIT", asked[0], max(1, round(asked[1] * 1000)))


def _refuses_writes(error: rx.ResponseError) -> bool:
    """Whether ``error`` is the engine refusing to write (not a bug of
    ours). MISCONF, a save that failed under stop-writes-on-bgsave-error,
    has no class of its own in redis-py."""
    return isinstance(error, _REFUSALS) or str(error).startswith("MISCONF")


def _reason(error: rx.ResponseError) -> str:
    """The engine's reason, without where in our script it was raised."""
    return _IN_SCRIPT.sub("", str(error))


def _unknown_kind(key: str) -> str | None:
    """Until a store says which keys are its own: none is."""
    return None


def _keys(command: Command) -> list[str]:
    """The keys a command of ours names: a script's KEYS, a stream read's
    streams, else its first argument."""
    name = str(command[0]).upper()
    args = [a if isinstance(a, str) else _decoded(a) if isinstance(a, bytes) else str(a)
            for a in command[1:]]
    if name in ("EVALSHA", "EVAL"):
        return args[2:2 + int(args[1])]
    if name == "XREAD" and "STREAMS" in args:
        streams = args[args.index("STREAMS") + 1:]
        return streams[:len(streams) // 2]
    return args[:1]


def _decoded(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _no_retry() -> Retry:
    """No retries inside redis-py: its default tries a refused connection
    again and again with backoff, so that an engine that is down (refused
    at once) looked like one that does not answer (after the whole
    deadline). The link fails the request; its client may try again."""
    return Retry(NoBackoff(), 0)


def writes_done(commands: Sequence[Command], replies: list[Any]) -> bool:
    """Whether a script ran (and may have written): then the round trip
    cannot simply be sent again. A script the engine did not run, or whose
    first write it refused (READONLY), answered why (missing, its slot
    elsewhere or moving, a replica). (Ours send a script alone, or reads
    with it.)"""
    for command, reply in zip(commands, replies, strict=True):
        name = str(command[0]).upper()
        if name == "EVALSHA" and not isinstance(reply, _NOT_RUN) and not _elsewhere(reply):
            return True
    return False


# Error replies that say the command wrote nothing (not run, or its first
# write refused: READONLY); those of them that say it may be run a little
# later.
_NOT_RUN = (
    rx.NoScriptError, rx.AskError, rx.TryAgainError, rx.ClusterDownError, rx.ReadOnlyError,
)
_WAIT = (rx.TryAgainError, rx.ClusterDownError)


def _elsewhere(reply: Any) -> bool:
    """Whether ``reply`` says the namespace's slot is served elsewhere now:
    MOVED, or UNBLOCKED (a blocked read on a master that became a
    replica)."""
    return isinstance(reply, rx.MovedError) or (
        isinstance(reply, rx.ResponseError) and str(reply).startswith("UNBLOCKED")
    )


def _bytes(value: str | bytes | int | float) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


# What a lost connection raises: the engine went away, or closed it.
_LOST = (rx.ConnectionError, rx.TimeoutError, OSError, TimeoutError)


def _closed(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection the engine closed (not one that
    went silent, nor one refused)."""
    return isinstance(exc, (ConnectionError, rx.ConnectionError)) and not isinstance(
        exc, (ConnectionRefusedError, TimeoutError, rx.TimeoutError)
    )


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) or isinstance(exc, rx.TimeoutError):
        return f"no answer within {TIMEOUT:g}s"
    text = str(exc) or type(exc).__name__
    return text
