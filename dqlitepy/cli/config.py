"""Options that are at once a flag, an environment variable and a config-file key.

A command describes its options as a table of :class:`Option`: a name (``data-dir``) that is
its flag (``--data-dir``), its key in the TOML config file (``data-dir``) and, upper-cased
after ``DQLITEPY_``, its environment variable (``DQLITEPY_DATA_DIR``); a :class:`Kind` that
parses and prints its values; a default; a help text.  Adding an option is adding a row.

* :func:`add_options` puts the table on an argparse parser, with ``--config FILE`` and
  ``--print-config``.  Every option gets ``default=SUPPRESS``, so an option absent from the
  command line is absent from the namespace: that is how a flag left out is told from a
  flag given with the default's value, and why the default lives in the table only.
* :func:`resolve` finds each option's value and where it came from.  Precedence: flag >
  environment > config file > default.  Every value given is checked, even one a higher
  source overrides (a mistake in a file is a mistake before it bites); all the problems
  found are reported together, each naming the file and key, or the variable, and the
  expected type.  An empty environment variable counts as unset, as a shell's
  ``DQLITEPY_X=`` usually means.
* :meth:`Config.render` is ``--print-config``: each value as a line of TOML with its source
  as a comment, so the output is itself a config file.  A secret is never printed, only
  whether it is set and from where.

Relative paths in a config file are relative to the file's directory, not to the working
directory of whoever starts the command: a file means the same wherever it is used from
(systemd starts services in ``/``).  Paths from flags and variables are the shell's: relative
to the working directory.  There is no default config file: a node reads a file only when
told to (``--config`` or ``DQLITEPY_CONFIG``), so nothing on disk changes a node silently.

TOML is read with :mod:`tomllib` (Python 3.11+), else with ``tomli``, its origin.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from pathlib import Path
from typing import Any

from .kinds import Kind

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "Config",
    "ConfigError",
    "Option",
    "Rank",
    "Setting",
    "Source",
    "add_options",
    "read_cluster_key",
    "resolve",
]

#: What every option's environment variable starts with.
ENV_PREFIX = "DQLITEPY_"
#: The environment variable naming the config file, when ``--config`` does not.
CONFIG_ENV = "DQLITEPY_CONFIG"


class ConfigError(ValueError):
    """Values that cannot be used; the message has one line per problem, each saying where."""


def read_cluster_key(path: str | None, value: str | None) -> bytes | None:
    """The cluster key: the content of the file ``path``, else ``value``; None: neither.

    Every command that takes the key (``server``, ``recover``) reads it here, so that
    the same file or variable means the same key to each of them.

    Raises:
        ConfigError: the file cannot be read or holds nothing but blanks.
    """
    if path is None:
        return None if not value else value.encode()
    try:
        with open(path, "rb") as f:
            key = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the cluster key file {path}: {exc.strerror}") from None
    if not key:
        raise ConfigError(f"the cluster key file {path} is empty")
    return key


# -- options -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    """One option: a flag, an environment variable and a config-file key.

    Attributes:
        name: the flag without ``--``, and the config-file key (``max-connections``).
        kind: how its values are read and written.
        default: its value when nothing sets it (None: not set).
        help: what it does, for ``--help`` (the default and the variable are appended).
        short: a one-letter flag too (``-a``).
        metavar: how ``--help`` names its argument.
        env: its environment variable: ``""`` for ``DQLITEPY_`` + the name upper-cased
            with ``_`` for ``-``; None for none.
        in_file: settable in the config file.
        on_command_line: settable by a flag (not for secrets: ``ps`` shows flags).
        secret: its value is never printed.
        group: the ``--help`` section it is listed in ("" for the main one).
    """

    name: str
    kind: Kind
    default: Any
    help: str
    short: str | None = None
    metavar: str | None = None
    env: str | None = ""
    in_file: bool = True
    on_command_line: bool = True
    secret: bool = False
    group: str = ""

    @property
    def dest(self) -> str:
        """The attribute of the argparse namespace."""
        return self.name.replace("-", "_")

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    @property
    def env_var(self) -> str | None:
        if self.env is None:
            return None
        return self.env or ENV_PREFIX + self.name.upper().replace("-", "_")


class Rank(IntEnum):
    """Where a value came from, lowest precedence first."""

    DEFAULT = 0
    FILE = 1
    ENV = 2
    FLAG = 3


@dataclass(frozen=True, slots=True)
class Source:
    """Where a value came from: its rank and the flag, variable or file."""

    rank: Rank
    where: str = ""

    def __str__(self) -> str:
        if self.rank is Rank.DEFAULT:
            return "default"
        return f"{('file', 'env', 'flag')[self.rank - 1]} {self.where}"


_DEFAULT = Source(Rank.DEFAULT)


@dataclass(frozen=True, slots=True)
class Setting:
    """An option's value and where it came from.

    Attributes:
        unused: why a value that was set is not used (another option said the same
            thing from a higher source); "" if it is.
    """

    option: Option
    value: Any
    source: Source
    unused: str = ""


class Config:
    """The effective value of every option of a command, each with its source."""

    def __init__(
        self, settings: Mapping[str, Setting], file: str | None, file_source: Source | None
    ) -> None:
        self._settings = dict(settings)
        #: The config file read, as named, and who named it; None: no file.
        self.file = file
        self.file_source = file_source

    def __getitem__(self, name: str) -> Any:
        setting = self._settings[name]
        return None if setting.unused else setting.value

    def setting(self, name: str) -> Setting:
        """The value of ``name`` and where it came from."""
        return self._settings[name]

    def one_of(self, first: str, second: str, what: str) -> None:
        """Two options that set ``what`` two ways (a key and a key file): keep one.

        The one set from the higher source is used, the other marked unused.

        Raises:
            ConfigError: both are set from the same source.
        """
        a, b = self._settings[first], self._settings[second]
        if a.value is None or b.value is None:
            return
        if a.source.rank == b.source.rank:
            raise ConfigError(f"{a.source} and {b.source} both set {what}: keep one")
        used, dropped = (a, b) if a.source.rank > b.source.rank else (b, a)
        self._settings[dropped.option.name] = replace(
            dropped, unused=f"{used.option.name} from {used.source} takes precedence"
        )

    def apply(self, namespace: argparse.Namespace) -> None:
        """Set every option's effective value on ``namespace`` (its ``dest`` attribute)."""
        for name, setting in self._settings.items():
            setattr(namespace, setting.option.dest, self[name])

    def render(self, title: str) -> str:
        """``--print-config``: every option as a TOML line, its source as a comment.

        Values that are not set, not used, secret or not settable in a file are
        comments, so that the output is a config file with the same effect (secrets
        aside).
        """
        precedence = "precedence: flag > env > file > default"
        where = (
            f"config file {self.file} (from {self.file_source})"
            if self.file is not None
            else f"no config file (--config FILE or {CONFIG_ENV})"
        )
        lines = [(f"# {title}: effective configuration; {precedence}", ""), (f"# {where}", "")]
        lines += [_line(setting) for setting in self._settings.values()]
        width = min(44, max(len(text) for text, comment in lines if comment))
        return "".join(
            f"{text:<{width}}  # {comment}\n" if comment else f"{text}\n" for text, comment in lines
        )


def _line(setting: Setting) -> tuple[str, str]:
    """One option of ``--print-config``: the TOML text and its comment."""
    option, value, source = setting.option, setting.value, setting.source
    comment = str(source)
    if option.secret:
        if value is None:
            return f"# {option.name}: not set", f"settable by env {option.env_var} only"
        unused = f"; not used: {setting.unused}" if setting.unused else ""
        return f"# {option.name}: set (from {source}){unused}; its value is never shown", ""
    if value is None and not option.kind.switch:  # a switch's None is "auto"
        return f"# {option.name}: not set", comment
    text = f"{option.name} = {option.kind.toml(value)}"
    if setting.unused:
        return f"# {text}", f"{comment}; not used: {setting.unused}"
    if not option.in_file:
        return f"# {text}", f"{comment}; not a config-file key"
    return text, comment


# -- argparse ------------------------------------------------------------------------------------


class _Switch(argparse.Action):
    """``--name`` sets True, ``--no-name`` False (argparse's BooleanOptionalAction without
    the default it appends to the help on some Python versions)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        strings = list(option_strings)
        strings += [f"--no-{s[2:]}" for s in option_strings if s.startswith("--")]
        super().__init__(strings, dest, nargs=0, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, not (option_string or "").startswith("--no-"))


def _argparse_type(kind: Kind) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return kind.parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.expected}, got {text!r}") from None

    return convert


def _help(option: Option) -> str:
    notes = []
    if (option.default is not None or option.kind.switch) and option.default != []:
        notes.append(f"default {option.kind.text(option.default)}")
    if option.env_var:
        notes.append(f"env {option.env_var}")
    if not option.in_file:
        notes.append("not in the config file")
    text = option.help + (f" ({'; '.join(notes)})" if notes else "")
    return text.replace("%", "%%")  # argparse formats help with %


def add_options(
    parser: argparse.ArgumentParser,
    options: Sequence[Option],
    groups: Mapping[str, str] | None = None,
) -> None:
    """Add ``options``, ``--config FILE`` and ``--print-config`` to ``parser``.

    Args:
        groups: the description of each option group named in ``options``.
    """
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"read options from this TOML file; flags and environment variables override it "
        f"(env {CONFIG_ENV})",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print every option's effective value and where it came from, and exit without "
        "starting anything",
    )
    sections: dict[str, argparse._ArgumentGroup] = {}
    for option in options:
        if not option.on_command_line:
            continue
        target: argparse.ArgumentParser | argparse._ArgumentGroup = parser
        if option.group:
            if option.group not in sections:
                description = (groups or {}).get(option.group)
                sections[option.group] = parser.add_argument_group(option.group, description)
            target = sections[option.group]
        flags = [option.flag] if option.short is None else [option.short, option.flag]
        common: dict[str, Any] = {
            "dest": option.dest,
            "default": argparse.SUPPRESS,
            "help": _help(option),
        }
        if option.kind.switch:
            target.add_argument(*flags, action=_Switch, **common)
            continue
        target.add_argument(
            *flags,
            type=_argparse_type(option.kind),
            action="extend" if option.kind.many else "store",
            metavar=option.metavar,
            **common,
        )


# -- resolution ----------------------------------------------------------------------------------


def resolve(
    options: Sequence[Option],
    args: argparse.Namespace,
    environ: Mapping[str, str],
    *,
    file_options: Sequence[Option] | None = None,
) -> Config:
    """Each option's value: its flag in ``args``, else its variable, else the file, else its
    default.

    Args:
        file_options: the options whose keys the config file may hold (default:
            ``options``).  A command that needs a few of a node's options (say, its data
            directory) passes the node's table here and reads the node's own file, whose
            other keys it then neither calls unknown nor uses.

    Raises:
        ConfigError: the config file cannot be read or is not TOML; it has unknown keys;
            a value in it or in a variable is not of the option's kind.
    """
    file, file_source = _config_file(args, environ)
    table: dict[str, Any] = {}
    errors: list[str] = []
    base = Path.cwd()
    if file is not None:
        table = _read(file)
        base = Path(file).resolve().parent
        errors += _unknown_keys(file, table, options if file_options is None else file_options)
    settings: dict[str, Setting] = {}
    for option in options:
        value, source = option.default, _DEFAULT
        try:
            if file is not None and option.in_file and option.name in table:
                value, source = _from_file(option, table[option.name], file, base)
            variable = option.env_var
            if variable and environ.get(variable, "").strip():
                value, source = _from_env(option, variable, environ[variable])
        except ConfigError as exc:
            errors.append(str(exc))
            continue
        if option.on_command_line and hasattr(args, option.dest):
            value, source = getattr(args, option.dest), Source(Rank.FLAG, option.flag)
        settings[option.name] = Setting(option, value, source)
    if errors:
        raise ConfigError("\n".join(errors))
    return Config(settings, file, file_source)


def _config_file(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[str | None, Source | None]:
    if getattr(args, "config", None):
        return str(args.config), Source(Rank.FLAG, "--config")
    if environ.get(CONFIG_ENV, "").strip():
        return environ[CONFIG_ENV], Source(Rank.ENV, CONFIG_ENV)
    return None, None


def _read(file: str) -> dict[str, Any]:
    try:
        with open(file, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {file}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {file}: not valid TOML: {exc}") from None


def _unknown_keys(file: str, table: Mapping[str, Any], options: Sequence[Option]) -> list[str]:
    known = {o.name: o for o in options}
    keys = [o.name for o in options if o.in_file]
    errors = []
    for key in table:
        option = known.get(key)
        if option is not None and option.in_file:
            continue
        if option is not None:
            via = f"use {option.env_var}" if option.env_var else "it is not a file setting"
            errors.append(f"config file {file}: key {key!r} cannot be set in a file ({via})")
            continue
        guess = difflib.get_close_matches(key.replace("_", "-").lower(), keys, n=1)
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        errors.append(f"config file {file}: unknown key {key!r}{hint}")
    return errors


def _from_file(option: Option, value: object, file: str, base: Path) -> tuple[Any, Source]:
    try:
        return option.kind.load(value, base), Source(Rank.FILE, file)
    except ValueError:
        raise ConfigError(
            f"config file {file}: key {option.name!r}: expected {option.kind.expected}, "
            f"got {_shown(option, value)}"
        ) from None


def _from_env(option: Option, variable: str, text: str) -> tuple[Any, Source]:
    try:
        return option.kind.parse(text), Source(Rank.ENV, variable)
    except ValueError:
        raise ConfigError(
            f"environment variable {variable}={_shown(option, text)}: expected "
            f"{option.kind.expected}"
        ) from None


def _shown(option: Option, value: object) -> str:
    return "(hidden)" if option.secret else repr(value)
