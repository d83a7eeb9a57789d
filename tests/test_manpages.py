"""Documentation that cannot drift: man pages, help texts, completion, the README's commands."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import pytest
import typer

from miso_cli.cli import manpages
from miso_cli.errors import ExitCode

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
README = ROOT / "README.md"


def test_man_pages_are_up_to_date() -> None:
    problems = manpages.diff_pages(MAN)
    assert not problems, (
        "man/ is out of date: " + ", ".join(problems) + "; regenerate with: "
        "python -m miso_cli.cli.manpages man/"
    )


def test_a_page_per_command() -> None:
    from miso_cli.cli import COMMANDS

    names = {p.name for p in MAN.glob("miso*.1")}
    assert "miso.1" in names
    for name, _ in COMMANDS:
        assert f"miso-{name}.1" in names


def test_every_command_and_option_has_help() -> None:
    missing = []
    for doc in manpages.collect():
        where = " ".join(doc.path)
        if not doc.short or not doc.description:
            missing.append(f"{where}: command help")
        for p in doc.params:
            if not p.help.strip():
                missing.append(f"{where} {p.synopsis}: help")
    assert not missing, "missing help text: " + "; ".join(missing)


def test_pages_carry_exit_codes_and_environment() -> None:
    pages = manpages.build_pages()
    top = pages["miso.1"]
    for code in ExitCode:
        assert f"\\fB{int(code)} {code.name}\\fR" in top
    assert "MISO_STATE_DIR" in top and "MISO_GPU" in top
    for name, text in pages.items():
        assert text.startswith('.TH "'), name
        assert ".SH NAME" in text and ".SH SYNOPSIS" in text and ".SH EXIT STATUS" in text


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_pages_render_without_warnings() -> None:
    for page in sorted(MAN.glob("*.1")):
        r = subprocess.run(
            ["groff", "-man", "-Tutf8", "-ww", "-z", str(page)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert r.returncode == 0 and not r.stderr.strip(), f"{page.name}: {r.stderr}"


def _toy_app() -> typer.Typer:
    app = typer.Typer(rich_markup_mode=None, cls=manpages.RecordingGroup)

    @app.command("frob")
    def frob(
        target: Annotated[str, typer.Argument(help="What to frob.")],
        level: Annotated[int, typer.Option(help="How hard.", envvar="FROB_LEVEL")] = 3,
        dry: Annotated[bool, typer.Option("--dry-run/--for-real", help="Pretend.")] = True,
        out: Annotated[Optional[Path], typer.Option(help="Where.")] = None,  # noqa: UP045
    ) -> None:
        """Frob a target.

        Frobbing is idempotent.

        .like this paragraph, text that starts with a dot is not a roff request.

        $ miso frob thing --level 2
        """

    @app.command("other")
    def other() -> None:
        """Do the other thing."""

    return app


def test_generator_on_a_toy_application() -> None:
    pages = manpages.build_pages(_toy_app())
    assert set(pages) == {"miso.1", "miso-frob.1", "miso-other.1"}
    page = pages["miso-frob.1"]
    assert "miso\\-frob \\- Frob a target" in page
    assert "\\fB\\-\\-level\\fR \\fI<int>\\fR" in page
    assert "Default: \\fB3\\fR. Environment: \\fBFROB_LEVEL\\fR." in page
    assert "Default: \\fB\\-\\-dry\\-run\\fR." in page
    assert "\\fITARGET\\fR" in page and "Required." in page
    assert ".SH EXAMPLES" in page and "miso frob thing \\-\\-level 2" in page
    # No line may start with a control character that roff would take as a request.
    for line in page.splitlines():
        if line.startswith((".", "'")):
            assert re.match(r"^\.(TH|SH|TP|PP|br|nf|fi|RS|RE)\b", line), line
    assert "\\&.like this paragraph" in page


def test_regeneration_is_one_command(tmp_path: Path) -> None:
    out = tmp_path / "man"
    assert manpages.main([str(out)]) == 0
    assert manpages.main([str(out), "--check"]) == 0
    (out / "miso.1").write_text("stale\n")
    (out / "miso-gone.1").write_text("no such command\n")
    assert manpages.main([str(out), "--check"]) == 1
    assert manpages.main([str(out)]) == 0
    assert not (out / "miso-gone.1").exists()
    assert manpages.main([str(out), "--check"]) == 0


# -- shell completion (Typer's) --------------------------------------------------


@pytest.fixture
def miso_exe(tmp_path: Path) -> Path:
    """A ``miso`` on PATH that runs this checkout (the console script may not be installed)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "miso"
    # Named "miso", as the console script is: completion keys on the program's name.
    code = "from miso_cli.cli import app; app(prog_name='miso')"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c "{code}" "$@"\n')
    exe.chmod(0o755)
    return exe


def _run_miso(miso_exe: Path, env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **env_extra)
    env["PATH"] = f"{miso_exe.parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        ["miso"], env=env, capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )


def test_completion_protocol_answers(miso_exe: Path) -> None:
    from miso_cli.cli import COMMANDS

    base = {"_MISO_COMPLETE": "complete_bash"}
    r = _run_miso(miso_exe, {**base, "COMP_WORDS": "miso ", "COMP_CWORD": "1"})
    assert r.returncode == 0, r.stderr
    offered = set(r.stdout.split())
    assert {name for name, _ in COMMANDS} <= offered
    r = _run_miso(miso_exe, {**base, "COMP_WORDS": "miso export --format ", "COMP_CWORD": "3"})
    assert set(r.stdout.split()) == {"mig-parted", "k8s", "slurm"}


@pytest.mark.parametrize("shell, marker", [("bash", "complete "), ("zsh", "#compdef miso"),
                                           ("fish", "complete --command miso")])  # fmt: skip
def test_completion_scripts(miso_exe: Path, shell: str, marker: str) -> None:
    r = _run_miso(miso_exe, {"_MISO_COMPLETE": f"source_{shell}"})
    assert r.returncode == 0 and marker in r.stdout
    assert "_MISO_COMPLETE=complete_" in r.stdout


def test_completion_is_documented() -> None:
    text = (ROOT / "docs" / "completion.md").read_text()
    assert "--install-completion" in text and "--show-completion" in text


# -- the README's commands run as written -----------------------------------------

_FENCE = re.compile(r"^```(\w+)?\s*$")
_EXIT_NOTE = re.compile(r"#\s*(?:→\s*)?exit(?:\s+code)?\s*[:=]?\s*(\d+)\s*$")
_SHELL_META = re.compile(r"[|&;<>()$`]")


def readme_commands(text: str) -> list[tuple[int, str, int]]:
    """(line number, command, expected exit code) of each ``$ miso ...`` line in a
    console/shell block of ``text``; ``# exit 4`` at the end of a line sets the code."""
    out = []
    lang: str | None = None
    in_block = False
    for n, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line.strip())
        if m:
            in_block = not in_block
            lang = m.group(1) if in_block else None
            continue
        if not in_block or lang not in ("console", "shell", "sh", "bash", "shell-session"):
            continue
        stripped = line.strip()
        if not stripped.startswith("$ miso ") and stripped != "$ miso":
            continue
        cmd = stripped[2:]
        code = 0
        note = _EXIT_NOTE.search(cmd)
        if note:
            code = int(note.group(1))
            cmd = cmd[: note.start()].rstrip()
        out.append((n, cmd, code))
    return out


def test_readme_extraction() -> None:
    text = (
        "Intro `$ miso nope`\n```console\n$ miso status --json\n{...}\n"
        "$ miso apply 7g.40gb   # exit 5\n```\n```python\n$ miso ignored\n```\n"
        "```sh\n$ miso doctor | head -3\n```\n"
    )
    assert readme_commands(text) == [
        (3, "miso status --json", 0),
        (5, "miso apply 7g.40gb", 5),
        (11, "miso doctor | head -3", 0),
    ]


def test_readme_commands_run_as_written(miso_exe: Path, tmp_path: Path) -> None:
    if not README.exists():
        pytest.skip("README.md has no commands yet")
    commands = readme_commands(README.read_text(encoding="utf-8"))
    if not commands:
        pytest.skip("README.md shows no `$ miso ...` lines yet")
    env = dict(os.environ)
    env["PATH"] = f"{miso_exe.parent}{os.pathsep}{env.get('PATH', '')}"
    env["MISO_STATE_DIR"] = str(tmp_path / "state")  # one state for the whole README, in order
    env["MISO_GPU"] = env.get("MISO_GPU") or "sim:a100-40gb"
    env.pop("MISO_DEBUG", None)
    # Run where the README's files (plan.json, handoff/) cannot litter the checkout, with
    # the checkout's examples/ at hand as in a clone.
    cwd = tmp_path / "clone"
    cwd.mkdir()
    (cwd / "examples").symlink_to(ROOT / "examples")

    def start(cmd: str, env: dict[str, str]) -> subprocess.Popen[str]:
        argv = ["bash", "-c", cmd] if _SHELL_META.search(cmd) else shlex.split(cmd)
        return subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    # `miso calibrate` needs an idle GPU and paces real jobs for most of the test's time:
    # it starts now, on GPUs of its own (its own state dir), and is checked at its line.
    early = {}
    for line, cmd, _ in commands:
        if cmd.split()[:2] == ["miso", "calibrate"]:
            early[line] = start(cmd, {**env, "MISO_STATE_DIR": str(tmp_path / f"state-{line}")})
    failures = []
    for line, cmd, want in commands:
        if "--install-completion" in cmd:  # would edit this machine's shell configuration
            continue
        proc = early.get(line) or start(cmd, env)
        try:
            out, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            failures.append(f"README.md:{line}: {cmd}: timed out")
            continue
        r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if r.returncode != want:
            failures.append(
                f"README.md:{line}: {cmd}: exit {r.returncode}, expected {want}: "
                f"{r.stderr.strip()[-300:]}"
            )
        if "Traceback (most recent call last)" in r.stderr:
            failures.append(f"README.md:{line}: {cmd}: traceback")
    assert not failures, "\n".join(failures)


# -- miso man: the pages without installed data files ------------------------------


def test_miso_man_prints_the_pages_in_man(cli) -> None:
    """`pip install -e` installs no data files, so `man miso` finds nothing; `miso man`
    prints the very pages kept in man/ (not a terminal here: the roff source)."""
    code, out, _ = cli("man")
    assert code == 0 and out == (MAN / "miso.1").read_text(encoding="utf-8")
    for name in ("run", "export", "man"):
        code, out, _ = cli("man", name)
        assert code == 0 and out == (MAN / f"miso-{name}.1").read_text(encoding="utf-8")
    code, out, err = cli("man", "nope")
    assert code == 2 and "nope" in err and "run" in err


def test_click_command_needs_a_recording_group() -> None:
    app = typer.Typer(rich_markup_mode=None)

    @app.command("a")
    def a() -> None:
        """A."""

    @app.command("b")
    def b() -> None:
        """B."""

    with pytest.raises(TypeError):
        manpages.click_command(app)


def _complete(miso_exe: Path, words: str, env: dict[str, str] | None = None) -> list[str]:
    cword = str(len(words.split()) - (0 if words.endswith(" ") else 1))
    r = _run_miso(
        miso_exe,
        {"_MISO_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": cword,
         **(env or {})},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    # Typer's bash script reads one value a line ("plain,VALUE" in Click's own format).
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    return [ln.split(",", 1)[1] if ln.startswith("plain,") else ln for ln in lines]


def test_completion_of_option_values(miso_exe: Path, tmp_path: Path) -> None:
    from miso_cli.gpu.profiles import MODELS
    from miso_cli.policy.registry import names

    assert _complete(miso_exe, "miso status --gpu ") == ["nvml"] + [
        f"sim:{k}" for k in sorted(MODELS)
    ]
    assert _complete(miso_exe, "miso status --gpu sim:a1") == ["sim:a100-40gb", "sim:a100-80gb"]
    assert _complete(miso_exe, "miso layouts --model a3") == ["a30-24gb"]
    assert _complete(miso_exe, "miso run q.toml --policy ") == names()
    listed = _complete(miso_exe, "miso simulate --policy miso,")
    assert listed and all(w.startswith("miso,") for w in listed) and "miso,miso" not in listed
    assert "1g.10gb+me" in _complete(miso_exe, "miso apply 1g.1")
    queue = tmp_path / "q.toml"
    queue.write_text('version = 1\n[[job]]\nname = "bert"\ncommand = ["x"]\n'
                     '[[job]]\nname = "gpt"\ncommand = ["x"]\n')  # fmt: skip
    words = f"miso export --queue {queue} --plan p.json --image "
    assert _complete(miso_exe, words) == []  # no completion invented for free text
    # Job names: none without a run (and no traceback in the shell).
    assert _complete(miso_exe, "miso cancel ", {"MISO_STATE_DIR": str(tmp_path)}) == []


def test_job_name_completion_from_a_queue(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from miso_cli.cli.completion import complete_job_name

    queue = tmp_path / "q.toml"
    queue.write_text('version = 1\n[[job]]\nname = "bert"\ncommand = ["x"]\n'
                     '[[job]]\nname = "gpt"\ncommand = ["x"]\n')  # fmt: skip
    ctx = SimpleNamespace(params={"queue": str(queue)})
    assert complete_job_name(ctx, "") == ["bert", "gpt"]
    assert complete_job_name(ctx, "g") == ["gpt"]
    ctx = SimpleNamespace(params={"queue": str(tmp_path / "missing.toml"),
                                  "state_dir": str(tmp_path)})  # fmt: skip
    assert complete_job_name(ctx, "") == []


def test_command_list_matches_each_commands_help() -> None:
    """`miso --help` lists the commands from a table (nothing imported): the table must
    say what each command's own help says first."""
    from miso_cli.cli import COMMANDS, SUMMARIES

    docs = {" ".join(d.path[1:]): d for d in manpages.collect()}
    assert [name for name, _ in COMMANDS] == list(SUMMARIES)
    for name, _ in COMMANDS:
        first = " ".join(docs[name].description[0].split())
        assert SUMMARIES[name] == first, f"miso {name}: SUMMARIES differs from its help"


def _modules_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    r = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    return set(r.stdout.split())


def test_a_command_imports_only_its_own_module() -> None:
    """`miso --help` imports no command module; `miso status` only its own."""
    from miso_cli.cli import COMMANDS

    commands = {f"miso_cli.cli.{module}" for _, module in COMMANDS}
    helped = _modules_after(
        "from miso_cli.cli import app\ntry:\n    app(['--help'])\nexcept SystemExit:\n    pass"
    )
    assert "miso_cli.cli" in helped
    assert not helped & commands
    status = _modules_after(
        "from miso_cli.cli import app\ntry:\n    app(['status', '--help'])\n"
        "except SystemExit:\n    pass"
    )
    assert status & commands == {"miso_cli.cli.status"}
    completed = _modules_after(
        "import os\nos.environ.update(_MISO_COMPLETE='complete_bash', COMP_WORDS='miso ',"
        " COMP_CWORD='1')\nfrom miso_cli.cli import app\ntry:\n    app(prog_name='miso')\n"
        "except SystemExit:\n    pass"
    )
    assert "miso_cli.cli" in completed and not completed & commands  # `miso <TAB>`
