"""CLI flags generated from the pydantic specs, and the merge of config file + flags into a validated spec.

Each leaf field of a spec becomes one option whose help is the field's description and whose default
text is the field's default (or "recipe" when the method's recipe fills it). docs/reference.md is
generated from the same list (`python -m contrastive_cli.docs`).
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import typer
from pydantic import BaseModel
from typer.core import TyperCommand
from pydantic_core import PydanticUndefined
from rich.markup import escape

from .errors import SpecError, UserError
from .spec import METHOD_SPECS, Spec, validate

SECTIONS = {"data": "Data", "backbone": "Backbone", "method": "Method", "augment": "Augmentation",
            "optim": "Optimisation", "runtime": "Runtime", "": "Evaluation"}


@dataclass(eq=False)  # hashed by identity: used as dict keys for given values
class Flag:
    path: tuple[str, ...]  # where the value goes in the spec, e.g. ("optim", "lr")
    flag: str  # "--lr"
    kind: Any  # the Python type Typer parses
    help: str
    default: str  # shown in help and docs
    choices: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()  # for method fields: the methods that have this field
    panel: str = ""  # a field's own section title (json_schema_extra={"section": ...}), else by spec path
    aliases: tuple[str, ...] = ()  # other spellings (json_schema_extra={"aliases": ["-k"]}), e.g. a short flag

    @property
    def param(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def section(self) -> str:
        return self.panel or SECTIONS.get(self.path[0] if len(self.path) > 1 else "", "Evaluation")


def _unwrap(annotation) -> tuple[Any, tuple[str, ...]]:
    """The type Typer should parse for a field annotation, and its Literal choices."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return _unwrap(non_none[0])
    if origin is typing.Annotated:
        return _unwrap(args[0])
    if origin is Literal:
        return str, tuple(str(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return list[_unwrap(args[0])[0]], ()
        return tuple[tuple(_unwrap(a)[0] for a in args)], ()
    if origin is list:
        return list[_unwrap(args[0])[0]], ()
    if annotation is Path:
        return Path, ()
    return annotation, ()


def _default_text(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    if field.default_factory is not None:
        return "see section"
    if field.default is None:
        return "recipe"
    d = field.default
    if isinstance(d, tuple):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in d)
    if isinstance(d, list):
        return " ".join(map(str, d))
    return str(d).lower() if isinstance(d, bool) else str(d)


def collect(model: type[BaseModel], prefix: tuple[str, ...] = (), skip: tuple[str, ...] = ("kind",)) -> list[Flag]:
    """One Flag per leaf field of `model`; method sub-specs are merged into one set of --method-field flags."""
    flags: list[Flag] = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        path = prefix + (name,)
        if name == "method" and prefix == ():
            flags.extend(method_flags())
            continue
        sub = _model_of(field.annotation)
        if sub is not None:
            flags.extend(collect(sub, path))
            continue
        extra = field.json_schema_extra or {}
        if "flag" in extra and extra["flag"] is None:  # inherited field that this command does not use
            continue
        kind, choices = _unwrap(field.annotation)
        help_ = field.description or ""
        if choices:
            help_ += f" Choices: {', '.join(choices)}."
        default = _default_text(field)
        if default == "recipe" and "[default:" in help_:  # the description says what fills it
            default = ""
        elif default == "recipe" and path[0] not in ("method", "optim", "augment"):
            default = "unset"
        flags.append(Flag(path, extra.get("flag", "--" + name.replace("_", "-")), kind, help_, default, choices,
                          panel=extra.get("section", ""), aliases=tuple(extra.get("aliases", ()))))
    return flags


def _model_of(annotation) -> Optional[type[BaseModel]]:
    for a in (annotation, *typing.get_args(annotation)):
        if inspect.isclass(a) and issubclass(a, BaseModel):
            return a
    return None


def method_flags() -> list[Flag]:
    names = tuple(METHOD_SPECS)
    papers = ", ".join(f"{name} ({spec.paper})" if spec.paper else name for name, spec in METHOD_SPECS.items())
    flags = [Flag(("method", "name"), "--method", str, f"Self-supervised method, oldest first: {papers}.",
                  "mocov2", names)]
    merged: dict[str, Flag] = {}
    for method, model in METHOD_SPECS.items():
        for f in collect(model, ("method",), skip=("name",)):
            if f.param in merged:
                merged[f.param].methods += (method,)
                if merged[f.param].default != f.default:
                    merged[f.param].default = "per method"
            else:
                f.methods = (method,)
                merged[f.param] = f
    for f in merged.values():
        if len(f.methods) < len(names):
            f.help += f" [{', '.join(f.methods)}]"
    return flags + list(merged.values())


# ---- building commands ---------------------------------------------------------------------------


def options(flags: list[Flag]) -> list[inspect.Parameter]:
    params = []
    for f in flags:
        decls = [f"{f.flag}/--no-{f.flag[2:]}"] if f.kind is bool else [f.flag, *f.aliases]
        params.append(inspect.Parameter(
            f.param, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[f.kind],
            default=typer.Option(None, *decls, help=escape(f"{f.help} [default: {f.default}]" if f.default else f.help), show_default=False,
                                 rich_help_panel=f.section)))
    return params


class ListFlagsCommand(TyperCommand):
    """A numeric list flag takes the values that follow it, as users write them (`--milestones 0.6 0.8`,
    `--k 20 200`); repeating the flag works too. String lists (`--classes`) take one value per flag, since a
    checkpoint argument could follow them; an extra value there gets a usage error saying so."""
    lists: dict[str, type] = {}  # flag -> element type, set per command by spec_command

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        options = {o for p in self.params for o in getattr(p, "opts", ())}
        spread, flag, values = [], None, 0  # the list flag being read and how many values it has taken
        for token in args:
            if token in options:
                flag, values = token, -1
            elif flag is not None and values and _is_a(self.lists.get(flag), token):
                spread.append(flag)  # one more value of the list: as if the flag were repeated
            elif values:
                flag = None
            values += 1
            spread.append(token)
        try:
            return super().parse_args(ctx, spread)
        except Exception as err:  # the parser's usage error: add the hint when a list flag was given
            given = [t for t in args if t in self.lists]
            if "unexpected extra argument" in str(getattr(err, "message", "")) and given:
                err.message += (f". A list flag such as {given[-1]} takes one value per flag when its values are "
                                f"not numbers: {given[-1]} A {given[-1]} B")
            raise


def _is_a(kind: Optional[type], token: str) -> bool:
    if kind not in (int, float):
        return False
    try:
        kind(token)
        return True
    except ValueError:
        return False


def spec_command(app: typer.Typer, name: str, model: type[Spec], run: Callable[..., None], *,
                 extra: list[inspect.Parameter], help: str, skip: tuple[str, ...] = ("kind",)) -> None:
    """Register `name` with one option per spec field plus `extra` parameters; `run(spec_flags, **extra)`."""
    flags = collect(model, skip=skip)
    extra_names = {p.name for p in extra}

    def command(**kwargs):
        given = {f: kwargs[f.param] for f in flags if kwargs.get(f.param) is not None}
        run(given, **{k: v for k, v in kwargs.items() if k in extra_names})

    command.__signature__ = inspect.Signature(extra + options(flags))
    command.__doc__ = help
    command.__name__ = name.replace("-", "_")
    lists = {f.flag: typing.get_args(f.kind)[0] for f in flags if typing.get_origin(f.kind) is list}
    cls = type(f"{command.__name__}_command", (ListFlagsCommand,), {"lists": lists})
    app.command(name, help=help, cls=cls)(command)


def load_config(path: Optional[Path]) -> dict:
    if path is None:
        return {}
    if not path.exists():
        raise UserError(f"The config file {path} does not exist", "pass an existing YAML or JSON file to --config")
    if not path.is_file():
        raise UserError(f"--config {path} is a folder, not a file", "pass a YAML or JSON file to --config")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"The config file {path} could not be read ({getattr(err, 'strerror', None) or err})",
                        "pass a readable YAML or JSON text file to --config") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # noqa: BLE001 - any parse error is the user's file
        raise UserError(f"The config file {path} could not be parsed ({err})",
                        "fix its syntax (YAML for .yaml/.yml, JSON otherwise)") from None
    if data is None:  # an empty file (or only comments): nothing to set
        return {}
    if not isinstance(data, dict):
        raise UserError(f"The config file {path} does not hold a mapping of spec sections",
                        "write it as e.g. `method: {name: simclr}` / `optim: {lr: 0.3}`")
    return data


def merge(model: type[Spec], config: dict, given: dict[Flag, Any]) -> Spec:
    """Config file values, then flags on top, validated together; one line per problem."""
    data = json.loads(json.dumps(config, default=str))
    problems = []
    method_flag = next((f for f in given if f.path == ("method", "name")), None)
    if method_flag is not None:
        old = data.get("method", {}) if isinstance(data.get("method"), dict) else {}
        if old.get("name") not in (None, given[method_flag]):
            data["method"] = {}  # switching method: the config's method fields were for another method
    chosen = (data.get("method") or {}).get("name") if isinstance(data.get("method"), dict) else None
    chosen = given.get(method_flag, chosen) or "mocov2"
    if "method" in model.model_fields and chosen not in METHOD_SPECS:  # the unknown method first, not its flags
        raise SpecError([f"method.name (--method): unknown method {chosen!r}; choose one of "
                         f"{', '.join(METHOD_SPECS)}"])
    for f, value in given.items():
        if f.methods and chosen not in f.methods:
            problems.append(f"{f.flag} does not apply to method {chosen} (it is used by {', '.join(f.methods)})")
            continue
        node = data
        for part in f.path[:-1]:
            node = node.setdefault(part, {})
        node[f.path[-1]] = list(value) if isinstance(value, tuple) else value
    if isinstance(data.get("method"), dict):
        data["method"].setdefault("name", chosen)
    flag_of = {f.path: f.flag for f in given} | {f.path: f.flag for f in collect(model)}
    try:
        spec = validate(model, data, flag_of)
    except SpecError as err:  # every problem at once: the flags that do not apply and the invalid values
        raise SpecError(problems + err.problems) from None
    if problems:
        raise SpecError(problems)
    return spec
