"""How the type checker sees an operation on each kind of submitter.

``sessionctl.operations`` writes each operation once, returning
``_submit``'s ``Reply``; what a caller gets differs by who submits it: the
value from a ``Client``, a ``Pending`` of it from a pipeline, a coroutine
of it from an ``AsyncClient``. ``operation`` and ``shaped`` say so to the
type checker. Only the type checker imports this module: at run time
``operations`` leaves each method as it is written (see there).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    Literal,
    ParamSpec,
    Protocol,
    TypeVar,
    overload,
)

from sessionctl.results import Ack, Session

if TYPE_CHECKING:
    from sessionctl.aclient import AsyncClient
    from sessionctl.client import Client
    from sessionctl.pipeline import Batch, Pending

T = TypeVar("T")
P = ParamSpec("P")
D = TypeVar("D")
S_co = TypeVar("S_co", covariant=True)
A_co = TypeVar("A_co", covariant=True)
D_co = TypeVar("D_co", covariant=True)


class Reply(Generic[T]):
    """What an operation's ``_submit`` hands back: a ``T`` from a
    ``Client``, a ``Pending[T]`` from a pipeline, an awaitable ``T``
    from an ``AsyncClient`` (see ``operation``)."""


class operation(Generic[P, T]):
    """An operation written once in ``Operations``, as each class that
    submits it returns it: ``Client.get`` returns a ``Session``,
    ``Pipeline.get`` a ``Pending[Session]``, ``AsyncClient.get`` a
    coroutine of a ``Session``. For the type checker only: at run time
    the method is left as it is written."""

    def __init__(self, method: Callable[Concatenate[Any, P], Reply[T]]) -> None: ...

    @overload
    def __get__(self, obj: None, owner: type) -> operation[P, T]: ...

    @overload
    def __get__(self, obj: Client, owner: type) -> Callable[P, T]: ...

    @overload
    def __get__(self, obj: Batch[Any], owner: type) -> Callable[P, Pending[T]]: ...

    @overload
    def __get__(
        self, obj: AsyncClient, owner: type
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...

    def __get__(self, obj: object, owner: type) -> Any: ...


class Shaped(Protocol[P, S_co, A_co, D_co]):
    """A ``shaped`` operation as a submitter returns it: ``S_co`` for
    ``returning="session"``, ``A_co`` for ``"ack"``, ``D_co`` when the
    call does not say (a pipeline's own ``returning``). The arguments
    are checked against the method's own signature when ``returning``
    is not given."""

    @overload
    def __call__(self, *args: Any, returning: Literal["ack"], **kwargs: Any) -> A_co: ...

    @overload
    def __call__(
        self, *args: Any, returning: Literal["session"], **kwargs: Any
    ) -> S_co: ...

    @overload
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> D_co: ...


class shaped(Generic[P]):
    """An ``operation`` answered with a ``Session`` or, with
    ``returning="ack"``, an ``Ack``. For the type checker only."""

    def __init__(self, method: Callable[Concatenate[Any, P], Reply[Any]]) -> None: ...

    @overload
    def __get__(self, obj: None, owner: type) -> shaped[P]: ...

    @overload
    def __get__(self, obj: Client, owner: type) -> Shaped[P, Session, Ack, Session]: ...

    @overload
    def __get__(
        self, obj: Batch[D], owner: type
    ) -> Shaped[P, Pending[Session], Pending[Ack], Pending[D]]: ...

    @overload
    def __get__(self, obj: AsyncClient, owner: type) -> Shaped[
        P, Coroutine[Any, Any, Session], Coroutine[Any, Any, Ack],
        Coroutine[Any, Any, Session],
    ]: ...

    def __get__(self, obj: object, owner: type) -> Any: ...
