"""A griffe extension: the `__init__` of an `equinox.Module`, read from its fields.

The API pages are built by static analysis (no import of scoredyn). griffe re-creates the
`__init__` of a class decorated with `@dataclass`, but an `equinox.Module` becomes a dataclass
through its metaclass, which static analysis cannot see. Without an `__init__`, every
"Parameters" entry of a module's docstring looks unknown to griffe, and the strict build fails.

This extension gives each equinox module without a hand-written `__init__` the one equinox
makes: one parameter per annotated field, in definition order over the class hierarchy (base
classes first), with the field's default. `eqx.field(...)` arguments `default`, `init` and
`kw_only` are honoured; `ClassVar`, `AbstractVar` and `AbstractClassVar` annotations are not
fields.
"""

from __future__ import annotations

from typing import Any

import griffe

_MODULE_PATHS = {"equinox.Module", "equinox._module.Module", "equinox._module._module.Module"}
_NOT_FIELDS = ("AbstractVar", "AbstractClassVar", "ClassVar")


def _is_equinox_module(cls: griffe.Class, seen: set[str] | None = None) -> bool:
    seen = set() if seen is None else seen
    if cls.path in seen:
        return False
    seen.add(cls.path)
    for base in cls.bases:
        path = base.canonical_path if isinstance(base, griffe.Expr) else str(base)
        if path in _MODULE_PATHS or path.endswith("eqx.Module"):
            return True
    try:
        parents = cls.resolved_bases
    except Exception:  # noqa: BLE001 -- an unresolvable base (outside the package) is not ours
        return False
    return any(_is_equinox_module(parent, seen) for parent in parents)


def _field_call_args(attribute: griffe.Attribute) -> dict[str, Any] | None:
    value = attribute.value
    if isinstance(value, griffe.ExprCall) and str(value.function).split(".")[-1] == "field":
        args: dict[str, Any] = {}
        for argument in value.arguments:
            if isinstance(argument, griffe.ExprKeyword):
                args[argument.name] = argument.value
        return args
    return None


def _own_parameters(cls: griffe.Class) -> list[griffe.Parameter]:
    parameters = []
    for member in cls.members.values():
        if member.is_alias or not member.is_attribute or member.annotation is None:
            continue
        if "property" in member.labels:
            continue
        annotation = str(member.annotation)
        if any(annotation.startswith(name) or f".{name}" in annotation for name in _NOT_FIELDS):
            continue
        field_args = _field_call_args(member)
        if field_args is not None and str(field_args.get("init")) == "False":
            continue
        kind = (
            griffe.ParameterKind.keyword_only
            if field_args is not None and str(field_args.get("kw_only")) == "True"
            else griffe.ParameterKind.positional_or_keyword
        )
        if field_args is None:
            default = member.value
        elif "default_factory" in field_args:
            default = griffe.ExprCall(function=field_args["default_factory"], arguments=[])
        else:
            default = field_args.get("default")
        parameters.append(
            griffe.Parameter(
                member.name,
                annotation=member.annotation,
                kind=kind,
                default=default,
                docstring=member.docstring,
            )
        )
    return parameters


class EquinoxInit(griffe.Extension):
    """Give equinox modules the `__init__` their metaclass writes."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:  # noqa: ARG002
        self._visit(pkg, set())

    def _visit(self, obj: griffe.Module | griffe.Class, done: set[str]) -> None:
        if obj.path in done:
            return
        done.add(obj.path)
        for member in list(obj.members.values()):
            if member.is_alias:
                continue
            if member.is_module or member.is_class:
                self._visit(member, done)  # type: ignore[arg-type]
        if isinstance(obj, griffe.Class) and "__init__" not in obj.members:
            self._set_init(obj)

    def _set_init(self, cls: griffe.Class) -> None:
        if not _is_equinox_module(cls):
            return
        try:
            mro = [cls, *cls.mro()]
        except ValueError:
            mro = [cls]
        by_name: dict[str, griffe.Parameter] = {}
        for klass in reversed(mro):
            if "__init__" in klass.members and klass is not cls:
                # a hand-written `__init__` upstream replaces the fields gathered so far
                init = klass.members["__init__"]
                if not init.is_alias and init.is_function:
                    by_name = {p.name: p for p in init.parameters if p.name != "self"}  # type: ignore[union-attr]
                continue
            for parameter in _own_parameters(klass):
                by_name.pop(parameter.name, None)
                by_name[parameter.name] = parameter
        init = griffe.Function(
            "__init__",
            lineno=0,
            endlineno=0,
            parent=cls,
            parameters=griffe.Parameters(
                griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword),
                *by_name.values(),
            ),
            returns="None",
        )
        cls.set_member("__init__", init)
