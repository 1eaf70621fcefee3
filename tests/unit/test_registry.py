from __future__ import annotations

import types

import pytest

from runner import InvalidArguments, JobContext, UnknownTask, handler
from runner.errors import ConfigurationError
from runner.registry import Registry, discover


@handler
def add(a: int, b: float = 1.0, note: str | None = None) -> float:
    """Add two numbers."""
    return a + b


@handler("ctx_task", context=True)
def with_context(ctx: JobContext, x: list) -> int:  # type: ignore[type-arg]
    return ctx.attempt


def test_the_decorator_names_and_describes_the_handler():
    assert add.name == "add"
    assert add.description == "Add two numbers."
    assert add(2, 3) == 5
    assert with_context.name == "ctx_task"
    assert with_context.takes_context and not with_context.transactional


@pytest.mark.parametrize(
    "args",
    [
        {"a": 1},
        {"a": 1, "b": 2},
        {"a": 1, "b": 2.5, "note": None},
        {"a": 1, "note": "x"},
    ],
)
def test_arguments_that_fit(args):
    add.check_arguments(args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "missing a required argument: 'a'"),
        ({"a": 1, "c": 2}, "unexpected keyword argument 'c'"),
        ({"a": "1"}, "a must be an integer, not '1'"),
        ({"a": True}, "a must be an integer, not True"),
        ({"a": 1, "b": "x"}, "b must be a number"),
        ({"a": 1, "note": 5}, "note must be"),
    ],
)
def test_arguments_that_do_not_fit(args, message):
    with pytest.raises(InvalidArguments, match="invalid arguments for 'add'") as info:
        add.check_arguments(args)
    assert message in str(info.value)


def test_the_context_parameter_is_not_an_argument():
    with_context.check_arguments({"x": [1]})
    with pytest.raises(InvalidArguments):
        with_context.check_arguments({"ctx": 1, "x": []})
    ctx = JobContext(job_id=1, task="ctx_task", attempt=3, max_attempts=5, conn=None)
    assert with_context.run(ctx, {"x": []}) == 3


def test_the_registry_refuses_two_handlers_for_one_name():
    other = handler("add")(lambda a: a)
    registry = Registry([add])
    registry.add(add)  # the same handler again is fine
    with pytest.raises(ConfigurationError, match="two handlers are registered"):
        registry.add(other)


def test_unknown_tasks():
    with pytest.raises(UnknownTask, match="unknown task 'nope'"):
        Registry().get("nope")


def test_discovery_finds_the_builtin_handlers_through_their_entry_point():
    registry = discover()
    assert "rotate_key" in registry and "noop" in registry
    assert registry.get("rotate_key").transactional


def test_discovery_imports_named_modules():
    registry = discover(["tests.support.tasks"])
    assert {"sleep", "fail", "record", "rotate_key"} <= {h.name for h in registry}
    with pytest.raises(ConfigurationError, match="cannot import handler module"):
        discover(["no.such.module"])


def test_a_module_contributes_every_handler_it_holds():
    module = types.ModuleType("m")
    module.add = add  # type: ignore[attr-defined]
    module.other = 42  # type: ignore[attr-defined]
    registry = Registry()
    registry.add_module(module)
    assert [h.name for h in registry] == ["add"]


def test_a_context_parameter_needs_context_true():
    with pytest.raises(ConfigurationError, match=r"@handler\(context=True\)"):

        @handler
        def needs(ctx: JobContext, n: int) -> None: ...

    @handler(context=True)
    def fine(ctx: JobContext, n: int) -> None: ...

    assert fine.takes_context
