"""The handler registry: task names mapped to the callables that run them.

Handlers come from the entry-point group `runner.handlers` (the built-in `handlers`
package declares itself there, and so can any installed package) and from modules
named on the command line or in `RUNNER_IMPORT`. An entry point may name a handler
or a module; every `Handler` found in a module is registered.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from importlib.metadata import entry_points
from types import ModuleType
from typing import TYPE_CHECKING, Any, Union, overload

from runner.errors import ConfigurationError, InvalidArguments, UnknownTask

if TYPE_CHECKING:
    from runner.store import Connection

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "runner.handlers"


@dataclass
class JobContext:
    """What a handler that asks for it receives as its first argument."""

    job_id: int
    task: str
    attempt: int
    max_attempts: int
    conn: Connection | None
    """The transaction that will complete the job, for transactional handlers."""
    _after_commit: list[Callable[[], None]] = field(default_factory=list)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the job's outcome has committed."""
        self._after_commit.append(callback)

    def committed(self) -> None:
        """Called by the worker once the job's outcome has committed."""
        for callback in self._after_commit:
            callback()


@dataclass(frozen=True)
class Handler:
    """A callable registered under a task name.

    A transactional handler runs inside the database transaction that completes its
    job, through `ctx.conn`: its writes and the job's completion commit together or
    not at all.
    """

    name: str
    func: Callable[..., Any]
    transactional: bool = False
    takes_context: bool = False
    timeout: float | None = None
    """Seconds an attempt may run before it is interrupted; None: the runner default."""
    validate: Callable[..., None] | None = None
    """Called with the arguments (defaults filled in) to reject bad values early,
    at enqueue time too; raises InvalidArguments."""
    description: str = ""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    # Worked out once per handler: the runner checks every job's arguments.
    @cached_property
    def _arguments_signature(self) -> inspect.Signature:
        """The signature of the job's arguments: the context parameter left out."""
        signature = inspect.signature(self.func)
        params = list(signature.parameters.values())
        return signature.replace(
            parameters=params[1:] if self.takes_context else params
        )

    @cached_property
    def _type_hints(self) -> dict[str, Any]:
        return _type_hints(self.func)

    @cached_property
    def _takes_anything(self) -> bool:
        """Whether any arguments will do: the handler takes only `**kwargs`, not
        annotated with a type to check, and has no `validate`."""
        params = list(self._arguments_signature.parameters.values())
        return (
            self.validate is None
            and len(params) == 1
            and params[0].kind is inspect.Parameter.VAR_KEYWORD
            and self._type_hints.get(params[0].name, Any) is Any
        )

    def check_arguments(self, args: dict[str, Any]) -> None:
        """Raise InvalidArguments when `args` cannot be passed to the handler.

        Names must fit the signature; values must fit plain annotations (int, float,
        str, bool, list, dict, and their unions with None). Others are not checked.
        """
        if self._takes_anything:
            return
        try:
            bound = self._arguments_signature.bind(**args)
        except TypeError as exc:
            raise InvalidArguments(
                f"invalid arguments for {self.name!r}: {exc}"
            ) from None
        hints = self._type_hints
        for name, value in bound.arguments.items():
            expected = hints.get(name)
            if expected is not None and not _fits(value, expected):
                raise InvalidArguments(
                    f"invalid arguments for {self.name!r}: {name} must be "
                    f"{_type_name(expected)}, not {value!r}"
                )
        if self.validate is not None:
            bound.apply_defaults()
            try:
                self.validate(**bound.arguments)
            except InvalidArguments as exc:
                raise InvalidArguments(
                    f"invalid arguments for {self.name!r}: {exc}"
                ) from None

    def run(self, ctx: JobContext, args: dict[str, Any]) -> Any:
        self.check_arguments(args)
        if self.takes_context:
            return self.func(ctx, **args)
        return self.func(**args)


@overload
def handler(func: Callable[..., Any], /) -> Handler: ...


@overload
def handler(
    name: str | None = None,
    /,
    *,
    transactional: bool = False,
    context: bool = False,
    timeout: float | None = None,
    validate: Callable[..., None] | None = None,
) -> Callable[[Callable[..., Any]], Handler]: ...


def handler(
    name_or_func: str | Callable[..., Any] | None = None,
    /,
    *,
    transactional: bool = False,
    context: bool = False,
    timeout: float | None = None,
    validate: Callable[..., None] | None = None,
) -> Handler | Callable[[Callable[..., Any]], Handler]:
    """Declare a handler, named after the function unless a name is given.

    `transactional=True` implies `context=True`: the handler receives a `JobContext`
    whose `conn` is the job's transaction.
    """

    def wrap(func: Callable[..., Any]) -> Handler:
        name = name_or_func if isinstance(name_or_func, str) else func.__name__
        if not (context or transactional) and _wants_context(func):
            raise ConfigurationError(
                f"handler {name!r} takes a JobContext first: declare it with "
                "@handler(context=True), or transactional=True"
            )
        doc = inspect.getdoc(func) or ""
        return Handler(
            name=name,
            func=func,
            transactional=transactional,
            takes_context=context or transactional,
            timeout=timeout,
            validate=validate,
            description=doc.splitlines()[0] if doc else "",
        )

    if callable(name_or_func):
        return wrap(name_or_func)
    return wrap


def _wants_context(func: Callable[..., Any]) -> bool:
    """Whether the first parameter is annotated JobContext."""
    params = list(inspect.signature(func).parameters.values())
    if not params:
        return False
    annotation = params[0].annotation
    if isinstance(annotation, str):
        return annotation.rsplit(".", 1)[-1] == "JobContext"
    return annotation is JobContext


class Registry:
    """Handlers by task name."""

    def __init__(self, handlers: Iterable[Handler] = ()) -> None:
        self._handlers: dict[str, Handler] = {}
        for h in handlers:
            self.add(h)

    def add(self, h: Handler) -> None:
        existing = self._handlers.get(h.name)
        if existing is not None and existing.func is not h.func:
            raise ConfigurationError(
                f"two handlers are registered for task {h.name!r}: "
                f"{_where(existing)} and {_where(h)}"
            )
        self._handlers[h.name] = h

    def add_module(self, module: ModuleType) -> None:
        for value in vars(module).values():
            if isinstance(value, Handler):
                self.add(value)

    def get(self, task: str) -> Handler:
        try:
            return self._handlers[task]
        except KeyError:
            raise UnknownTask(task) from None

    def __contains__(self, task: object) -> bool:
        return task in self._handlers

    def __iter__(self) -> Iterator[Handler]:
        return iter(sorted(self._handlers.values(), key=lambda h: h.name))

    def __len__(self) -> int:
        return len(self._handlers)


def _type_hints(func: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func)
    except (NameError, TypeError):
        return {}


_JSON_TYPES: dict[Any, tuple[type, ...]] = {
    int: (int,),
    float: (int, float),
    str: (str,),
    bool: (bool,),
    list: (list,),
    dict: (dict,),
}


def _fits(value: Any, expected: Any) -> bool:
    """Whether a JSON value fits a plain annotation; True for any other annotation."""
    if expected is Any:
        return True
    if isinstance(expected, types.UnionType) or typing.get_origin(expected) is Union:
        return any(_fits(value, t) for t in typing.get_args(expected))
    if expected is type(None):
        return value is None
    expected = typing.get_origin(expected) or expected
    allowed = _JSON_TYPES.get(expected)
    if allowed is None:
        return True
    if isinstance(value, bool) and expected is not bool:
        return False
    return isinstance(value, allowed)


def _type_name(expected: Any) -> str:
    if isinstance(expected, type):
        return {
            int: "an integer",
            float: "a number",
            str: "a string",
            bool: "true or false",
            list: "a list",
            dict: "an object",
        }.get(expected, expected.__name__)
    return str(expected)


def _where(h: Handler) -> str:
    return f"{h.func.__module__}.{h.func.__qualname__}"


def discover(imports: Iterable[str] = ()) -> Registry:
    """Build the registry from installed entry points and the named modules."""
    registry = Registry()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            _register(registry, ep.load())
        except ConfigurationError:
            raise
        except Exception as exc:
            raise ConfigurationError(
                f"cannot load handlers from entry point {ep.name!r} ({ep.value}): {exc}"
            ) from exc
    for name in imports:
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            raise ConfigurationError(
                f"cannot import handler module {name!r}: {type(exc).__name__}: {exc}"
            ) from exc
        registry.add_module(module)
    return registry


def _register(registry: Registry, obj: object) -> None:
    if isinstance(obj, Handler):
        registry.add(obj)
    elif isinstance(obj, ModuleType):
        registry.add_module(obj)
    else:
        raise ConfigurationError(f"{obj!r} is neither a handler nor a module")
