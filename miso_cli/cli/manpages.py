"""Man pages for ``miso`` and each subcommand, generated from the CLI itself.

Everything on a page comes from the Typer application: the help texts, the
options with their types, defaults and environment variables, and the exit
codes from :class:`miso_cli.errors.ExitCode` (with the comment beside each
member). Lines of a command's help that start with ``$ miso`` become its
EXAMPLES section. Nothing is written by hand, so the pages cannot drift:
``tests/test_manpages.py`` regenerates them and fails if ``man/`` differs.

Regenerate with::

    python -m miso_cli.cli.manpages man/          # write the pages
    python -m miso_cli.cli.manpages man/ --check  # exit 1 if they are out of date
"""

from __future__ import annotations

import enum
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from miso_cli import __version__
from miso_cli.cli.group import RecordingGroup

MANUAL = "miso manual"
SECTION = "1"

# Variables that miso reads without an option of its own (options' variables are
# collected from the application).
_EXTRA_ENVIRONMENT = {
    "XDG_STATE_HOME": "Base of the default state directory ($XDG_STATE_HOME/miso; "
    "~/.local/state/miso when unset).",
    "NO_COLOR": "When set, human output carries no colour (honoured by Rich).",
}


@dataclass(frozen=True)
class ExitStatus:
    code: int
    name: str
    meaning: str


def exit_statuses() -> list[ExitStatus]:
    """The exit codes, each with the comment beside it in ``miso_cli/errors.py``."""
    from miso_cli.errors import ExitCode

    comments: dict[str, str] = {}
    try:
        source = inspect.getsource(ExitCode)
    except (OSError, TypeError):  # no source shipped: names alone still say a lot
        source = ""
    for m in re.finditer(r"^\s*([A-Z_]+)\s*=\s*\d+\s*#\s*(.+?)\s*$", source, re.M):
        comments[m.group(1)] = m.group(2)
    return [
        ExitStatus(int(member), member.name, comments.get(member.name, "")) for member in ExitCode
    ]


# -- roff ---------------------------------------------------------------------


def esc(text: str) -> str:
    """Escape text for roff: backslashes, hyphens, and control characters at line start."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in text.split("\n"):
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def _bold(text: str) -> str:
    return f"\\fB{esc(text)}\\fR"


def _italic(text: str) -> str:
    return f"\\fI{esc(text)}\\fR"


def _paragraphs(text: str) -> list[str]:
    """Split help text into paragraphs, joining wrapped lines (as Click's help does)."""
    out = []
    for block in re.split(r"\n\s*\n", inspect.cleandoc(text or "")):
        lines = [ln.strip() for ln in block.strip().splitlines()]
        lines = [ln for ln in lines if ln and ln != "\b"]
        if lines:
            out.append(" ".join(lines))
    return out


def _split_help(text: str) -> tuple[list[str], list[str]]:
    """(description paragraphs, example command lines) of a command's help."""
    desc: list[str] = []
    examples: list[str] = []
    for para in re.split(r"\n\s*\n", inspect.cleandoc(text or "")):
        lines = [ln.strip() for ln in para.strip().splitlines() if ln.strip()]
        if lines and all(ln.startswith("$ ") for ln in lines):
            examples.extend(ln[2:] for ln in lines)
        elif lines:
            desc.extend(_paragraphs("\n".join(lines)))
    return desc, examples


# -- the application ------------------------------------------------------------


@dataclass
class ParamDoc:
    kind: str  # "option" or "argument"
    synopsis: str  # e.g. "--gpu <text>"
    help: str
    default: str | None
    envvar: str | None
    required: bool


@dataclass
class CommandDoc:
    path: list[str]  # ["miso"] or ["miso", "status"]
    short: str
    description: list[str]
    examples: list[str]
    params: list[ParamDoc]
    subcommands: list[tuple[str, str]]  # (name, short help) for the root


def _default_text(param: Any) -> str | None:
    default = param.default
    if callable(default) or default is None:
        return None
    if getattr(param, "is_flag", False):
        secondary = getattr(param, "secondary_opts", [])
        if secondary:  # --x/--no-x: name the side that is the default
            return param.opts[0] if default else secondary[0]
        return None  # a plain switch is off unless given
    if isinstance(default, enum.Enum):
        return str(default.value)
    if isinstance(default, (list, tuple)):
        return ", ".join(str(d) for d in default) or None
    return str(default)


def _param_doc(param: Any, ctx: Any) -> ParamDoc | None:
    if getattr(param, "hidden", False):
        return None
    record = param.get_help_record(ctx)
    if record is None:
        return None
    envvar = param.envvar
    if isinstance(envvar, (list, tuple)):
        envvar = ", ".join(envvar)
    help_text = " ".join(_paragraphs(getattr(param, "help", None) or ""))
    return ParamDoc(
        kind=param.param_type_name,
        synopsis=record[0],
        help=help_text,
        default=_default_text(param),
        envvar=envvar or None,
        required=bool(param.required),
    )


def click_command(app: Any) -> Any:
    """The Click group behind ``app`` (whose ``cls`` is a :class:`RecordingGroup`).

    Calling the app with ``--help`` and Click's ``standalone_mode=False`` builds the group
    and runs nothing else; the help text it prints is discarded.
    """
    import contextlib
    import io

    RecordingGroup.last = None
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        app(args=["--help"], prog_name="miso", standalone_mode=False)
    if RecordingGroup.last is None:
        raise TypeError("the application's group class must be a RecordingGroup")
    return RecordingGroup.last


def collect(app: Any = None, root: Any = None) -> list[CommandDoc]:
    """The root command and every subcommand of ``app`` (default: miso's), documented.

    ``root`` is the Click group itself when the caller has it (``miso man`` takes it
    from its own context).
    """
    if root is None:
        if app is None:
            from miso_cli.cli import app as miso_app

            app = miso_app
        root = click_command(app)
    # As Click's make_context would: the group's context settings (e.g. -h for --help).
    root_ctx = typer.Context(root, info_name="miso", **(root.context_settings or {}))
    docs = []
    names = root.list_commands(root_ctx) if hasattr(root, "list_commands") else []
    subs = []
    for name in names:
        sub = root.get_command(root_ctx, name)
        if sub is None or getattr(sub, "hidden", False):
            continue
        subs.append((name, sub))
    desc, examples = _split_help(root.help or "")
    docs.append(
        CommandDoc(
            path=["miso"],
            short=(desc[0] if desc else "").rstrip("."),
            description=desc,
            examples=examples,
            params=[
                d for p in root.get_params(root_ctx) if (d := _param_doc(p, root_ctx)) is not None
            ],
            subcommands=[(n, _short(s)) for n, s in subs],
        )
    )
    for name, sub in subs:
        sub_ctx = typer.Context(sub, info_name=name, parent=root_ctx)
        desc, examples = _split_help(sub.help or "")
        docs.append(
            CommandDoc(
                path=["miso", name],
                short=_short(sub),
                description=desc,
                examples=examples,
                params=[
                    d for p in sub.get_params(sub_ctx) if (d := _param_doc(p, sub_ctx)) is not None
                ],
                subcommands=[],
            )
        )
    return docs


def _short(cmd: Any) -> str:
    if getattr(cmd, "short_help", None):
        return str(cmd.short_help).rstrip(".")
    desc, _ = _split_help(cmd.help or "")
    first = desc[0] if desc else ""
    # The first sentence, as a one-line summary.
    m = re.match(r"(.+?[.!?])(\s|$)", first)
    return (m.group(1) if m else first).rstrip(".")


# -- pages --------------------------------------------------------------------


def page_name(doc: CommandDoc) -> str:
    return "-".join(doc.path) + "." + SECTION


def render(doc: CommandDoc, all_docs: list[CommandDoc]) -> str:
    """One man page, in roff (man macros)."""
    title = "-".join(doc.path).upper()
    out: list[str] = [
        f'.TH "{esc(title)}" "{SECTION}" "" "miso {esc(__version__)}" "{MANUAL}"',
        ".SH NAME",
        f"{esc('-'.join(doc.path))} \\- {esc(doc.short)}",
        ".SH SYNOPSIS",
    ]
    args = [p for p in doc.params if p.kind == "argument"]
    options = [p for p in doc.params if p.kind == "option"]
    syn = [_bold(" ".join(doc.path))]
    if options:
        syn.append("[\\fIOPTIONS\\fR]")
    if doc.subcommands:
        syn.append("\\fICOMMAND\\fR [\\fIARGS\\fR]...")
    for a in args:
        name = a.synopsis.split()[0].upper()
        syn.append(_italic(name) if a.required else f"[{_italic(name)}]")
    out.append(" ".join(syn))
    out.append(".SH DESCRIPTION")
    for i, para in enumerate(doc.description):
        if i:
            out.append(".PP")
        out.append(esc(para))
    if doc.subcommands:
        out.append(".SH COMMANDS")
        for name, short in doc.subcommands:
            out += [
                ".TP",
                _bold(f"miso {name}"),
                esc(short) + f". See \\fBmiso\\-{esc(name)}\\fR(1).",
            ]
    if args:
        out.append(".SH ARGUMENTS")
        for a in args:
            out += [".TP", _italic(a.synopsis.split()[0].upper()), esc(a.help or "")]
            if a.required:
                out += [".br", "Required."]
    if options:
        out.append(".SH OPTIONS")
        for o in options:
            out += [".TP", _format_synopsis(o.synopsis), esc(o.help or "")]
            notes = []
            if o.required:
                notes.append("Required.")
            if o.default is not None:
                notes.append(f"Default: {_bold(o.default)}.")
            if o.envvar:
                notes.append(f"Environment: {_bold(o.envvar)}.")
            if notes:
                out += [".br", " ".join(notes)]
    out.append(".SH EXIT STATUS")
    for st in exit_statuses():
        meaning = st.meaning or ("success" if st.code == 0 else st.name)
        out += [".TP", _bold(f"{st.code} {st.name}"), esc(_sentence(meaning.replace("`", "")))]
    env = _environment(doc, all_docs)
    if env:
        out.append(".SH ENVIRONMENT")
        for name, text in env:
            out += [".TP", _bold(name), esc(text)]
    if doc.examples:
        out.append(".SH EXAMPLES")
        for ex in doc.examples:
            out += [".PP", ".nf", ".RS 4", esc(ex), ".RE", ".fi"]
    out.append(".SH SEE ALSO")
    others = [d for d in all_docs if d is not doc]
    out.append(", ".join(f"\\fB{esc('-'.join(d.path))}\\fR({SECTION})" for d in others))
    return "\n".join(out) + "\n"


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", ")")) else text + "."


def _format_synopsis(synopsis: str) -> str:
    """``-f, --format <a|b>`` -> bold option names, italic value."""
    parts = []
    for token in re.split(r"(\s+)", synopsis):
        if token.startswith("-"):
            parts.append(_bold(token.rstrip(",")) + ("," if token.endswith(",") else ""))
        elif token.strip() and token != "/":
            parts.append(_italic(token))
        else:
            parts.append(esc(token))
    return "".join(parts)


def _environment(doc: CommandDoc, all_docs: list[CommandDoc]) -> list[tuple[str, str]]:
    scope = all_docs if doc.path == ["miso"] else [doc]
    seen: dict[str, str] = {}
    for d in scope:
        for p in d.params:
            if p.envvar and p.envvar not in seen:
                seen[p.envvar] = f"Same as {p.synopsis.split()[0].rstrip(',')}: {p.help}"
    if doc.path == ["miso"]:
        seen.update(_EXTRA_ENVIRONMENT)
    return sorted(seen.items())


def build_pages(app: Any = None, root: Any = None) -> dict[str, str]:
    """File name -> roff text, for ``miso`` and each subcommand."""
    docs = collect(app, root)
    return {page_name(d): render(d, docs) for d in docs}


def write_pages(outdir: Path, app: Any = None) -> list[Path]:
    """Write the pages into ``outdir``, removing stale ``miso*.1`` pages; return the paths."""
    from miso_cli.runtime.state import atomic_write_text

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    pages = build_pages(app)
    for stale in outdir.glob(f"miso*.{SECTION}"):
        if stale.name not in pages:
            stale.unlink()
    written = []
    for name, text in sorted(pages.items()):
        path = outdir / name
        atomic_write_text(path, text, mode=0o644)
        written.append(path)
    return written


def diff_pages(outdir: Path, app: Any = None) -> list[str]:
    """Names of pages in ``outdir`` that are missing, stale or different."""
    outdir = Path(outdir)
    pages = build_pages(app)
    problems = []
    for name, text in sorted(pages.items()):
        path = outdir / name
        if not path.exists():
            problems.append(f"{name} (missing)")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{name} (differs)")
    for extra in sorted(outdir.glob(f"miso*.{SECTION}")):
        if extra.name not in pages:
            problems.append(f"{extra.name} (no such command)")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    rest = [a for a in args if a != "--check"]
    if len(rest) != 1 or rest[0].startswith("-"):
        print("usage: python -m miso_cli.cli.manpages DIR [--check]", file=sys.stderr)
        return 2
    outdir = Path(rest[0])
    if check:
        problems = diff_pages(outdir)
        for p in problems:
            print(f"out of date: {outdir / p}", file=sys.stderr)
        if problems:
            print("regenerate with: python -m miso_cli.cli.manpages man/", file=sys.stderr)
        return 1 if problems else 0
    for path in write_pages(outdir):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
