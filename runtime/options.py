"""Command-line options made from config dataclass fields: every default and its help text are
written once, on the field, and the typer command is built from the fields.

    @dataclass(frozen=True)
    class VideoConfig:
        crf: int = setting(18, "Constant rate factor: lower is better and bigger.", min=0, max=63)

    @command(app, VideoConfig, arguments=("input",))
    def video(cfg: VideoConfig) -> None:      # cfg is built from the parsed options
        convert_video(cfg)

A field's metadata says how it appears: `flags` (default `--field-name`; `-o/--output` for
`output`; `--x/--no-x` for a bool that defaults to True), `min`/`max`, `metavar`, `cli` (the type
the command line takes, when it is not the field's) with `parse` (command-line value -> field
value) and `shown` (field default -> the command line's), or `cli=False` to keep it off the
command line. The decorated function may take its own extra parameters beside `cfg` (typer
Annotated, as usual), and `ctx: typer.Context` to see which options were given (`given(ctx)`).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

if TYPE_CHECKING:
    import typer

# Configs import `setting` from here; typer is loaded only when a command line is built.
REQUIRED = dataclasses.MISSING


def setting(default: Any = REQUIRED, help: str = "", *, flags: tuple[str, ...] | None = None,
            min: float | None = None, max: float | None = None, metavar: str | None = None,
            cli: Any = None, parse: Callable | None = None, shown: Callable | None = None,
            resumable: bool = False) -> Any:
    """A dataclass field with its command-line form; see the module docstring. `resumable` marks
    a setting that changes nothing a run computes (a resumed run may take another value)."""
    meta = {"help": help, "flags": flags, "min": min, "max": max, "metavar": metavar, "cli": cli,
            "parse": parse, "shown": shown, "resumable": resumable}
    return dataclasses.field(default=default, metadata={"option": meta})


def field_options(cls) -> dict[str, dict]:
    """name -> the option metadata of every field of `cls` that is on the command line."""
    return {f.name: f.metadata["option"] for f in dataclasses.fields(cls)
            if "option" in f.metadata and f.metadata["option"]["cli"] is not False}


def resumable_fields(cls) -> frozenset[str]:
    """The fields marked resumable: settings a resumed run may change."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("option", {}).get("resumable"))


def given(ctx: typer.Context) -> set[str]:
    """The parameters of the running command that were given on its command line."""
    return {name for name in ctx.params if (source := ctx.get_parameter_source(name)) is not None
            and source.name == "COMMANDLINE"}


def _optional(tp) -> tuple[Any, bool]:
    """(T, True) for `T | None` and Optional[T], else (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _cli_type(tp) -> tuple[Any, bool]:
    """The type typer parses for a field of type `tp`, and whether it is a tuple taken as a repeated option."""
    inner, optional = _optional(tp)
    if typing.get_origin(inner) is tuple and typing.get_args(inner)[-1:] == (Ellipsis,):
        return list[typing.get_args(inner)[0]], True
    return (Optional[inner] if optional else inner), False


def _parameter(f: dataclasses.Field, tp, meta: dict, argument: bool) -> tuple[inspect.Parameter, Callable]:
    """The typer parameter of one field, and the conversion of its parsed value back to the field's."""
    import typer
    cli_type, repeated = (meta["cli"], False) if meta["cli"] is not None else _cli_type(tp)
    has_default = f.default is not REQUIRED
    default = f.default if has_default else inspect.Parameter.empty
    if meta["shown"] is not None and has_default:
        default = meta["shown"](default)
    elif (repeated or meta["parse"] is not None) and has_default:
        default = None                   # "not given": parse or the field's default decides
        if typing.get_origin(cli_type) is not typing.Union:
            cli_type = Optional[cli_type]
    name = f.name.replace("_", "-")
    if argument:
        info = typer.Argument(metavar=meta["metavar"] or f.name.upper(), help=meta["help"], show_default=has_default)
    else:
        flags = meta["flags"] or (("-o", "--output") if f.name == "output" else
                                  (f"--{name}/--no-{name}",) if tp is bool and f.default is True else (f"--{name}",))
        info = typer.Option(*flags, help=meta["help"], min=meta["min"], max=meta["max"], metavar=meta["metavar"],
                            show_default=has_default and default is not None)

    def convert(value):
        if meta["parse"] is not None:
            return meta["parse"](value)
        if repeated:
            return tuple(value or ()) if value or not has_default else f.default
        return value

    kind = inspect.Parameter.KEYWORD_ONLY
    return inspect.Parameter(f.name, kind, default=default, annotation=Annotated[cli_type, info]), convert


def plain_metavars() -> None:
    """Help in the usual Unix form: `IMAGE...` for arguments (recent typer writes a required
    argument as `{IMAGE}...` in the usage line and `IMAGE <list[str]>` in its help), and no value
    after an option that takes none. Applied once, to typer's parameter classes, where they have
    the methods this replaces (other typer versions are left as they are)."""
    from typer import core
    argument = getattr(core, "TyperArgument", None)
    if argument is None or getattr(argument, "_plain_metavars", False):
        return
    if hasattr(argument, "_usage_display_name"):
        def usage(self) -> str:
            name = self.display_name_raw.upper()
            return (name if self.required else f"[{name}]") + ("..." if self.nargs != 1 else "")
        argument._usage_display_name = usage
    if hasattr(argument, "_rich_display_name") and hasattr(argument, "display_type_rich"):
        argument._rich_display_name = lambda self: self.display_name_raw.upper() + ("..." if self.nargs != 1 else "")
        argument.display_type_rich = lambda self, ctx: None
    option = getattr(core, "TyperOption", None)
    if option is not None and hasattr(option, "display_type_rich"):
        shown = option.display_type_rich
        option.display_type_rich = lambda self, ctx: None if self.is_flag or self.count else shown(self, ctx)
    argument._plain_metavars = True


def command(app: typer.Typer, cls, *, name: str | None = None, arguments: tuple[str, ...] = (),
            **typer_kwargs) -> Callable:
    """Register the decorated function as a typer command whose options are `cls`'s fields; the
    function is called with `cfg=cls(**parsed)` and its own extra parameters."""
    plain_metavars()
    hints = typing.get_type_hints(cls)
    options = field_options(cls)

    def decorate(fn: Callable) -> Callable:
        own = inspect.signature(fn, eval_str=True).parameters
        extra = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own.values() if p.name != "cfg"]
        params, converters = [], {}
        for f in dataclasses.fields(cls):
            if f.name in options:
                p, converters[f.name] = _parameter(f, hints[f.name], options[f.name], f.name in arguments)
                params.append(p)
        # Positional arguments first, in the order given; then the options in field order.
        params.sort(key=lambda p: (p.name not in arguments, arguments.index(p.name) if p.name in arguments else 0))

        @functools.wraps(fn)
        def run(**values):
            fields = {k: converters[k](values.pop(k)) for k in list(values) if k in converters}
            return fn(cfg=cls(**fields), **values)

        run.__signature__ = inspect.Signature(params + extra)
        run.__annotations__ = {}
        del run.__wrapped__           # typer must read the signature above, not fn's
        return app.command(name=name, **typer_kwargs)(run)
    return decorate
