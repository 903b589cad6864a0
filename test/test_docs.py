"""The README stays short, and every `ws` command that README.md and docs/*.md name exists.

A command is named in a ```bash block (a line, or a part of one after `&&`, `;`, `do` or `then`,
that starts with `ws ` or `.venv/bin/ws `; a line ending in a backslash continues on the next)
or in an inline code span that starts the same way. For each one the test walks the `ws`
parser's subcommands as far as the words go, asks that subcommand for --help in-process (exit 0,
as `ws <path> --help` would), and checks that every option the line spells (`--name`, `-p`) is
one that subcommand takes. So a renamed or removed command or flag fails here, not in a
reader's shell.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_FILES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 250

_WS = re.compile(r"^(?:\.venv/bin/)?ws\s")
_INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")


def _build_parser() -> argparse.ArgumentParser:
    """The parser `ws` runs: ws_cli.main.build_parser (or ws_cli.build_parser, if it moves)."""
    try:
        from ws_cli.main import build_parser
    except ImportError:  # pragma: no cover - only if the CLI package moves its assembly
        from ws_cli import build_parser
    return build_parser()


def _strip_comment(line: str) -> str:
    """A shell comment: '#' at the start or after whitespace, to the end of the line."""
    m = re.search(r"(^|\s)#", line)
    return line[: m.start()] if m else line


def _bash_commands(text: str):
    """(line number, command) for each ws command in the ```bash blocks of a markdown text."""
    in_bash = False
    pending, pending_line = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            in_bash = not in_bash and stripped[3:].strip() in ("bash", "sh", "shell", "console")
            pending = ""
            continue
        if not in_bash:
            continue
        line = _strip_comment(raw).rstrip()
        if not pending:
            pending_line = n
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full, pending = pending + line, ""
        for part in re.split(r"&&|;|\|\|", full):
            part = re.sub(r"^\s*(?:do|then|else)\s+", "", part).strip()
            if _WS.match(part):
                yield pending_line, part


def _inline_commands(text: str):
    """(line number, command) for each inline code span outside fences that starts with ws."""
    in_fence = False
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for span in _INLINE.findall(line):
            span = span.strip()
            if _WS.match(span):
                yield n, span


def _named_commands():
    found = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT).as_posix()
        for n, cmd in [*_bash_commands(text), *_inline_commands(text)]:
            found.append(pytest.param(cmd, id=f"{rel}:{n}:{cmd[:60]}"))
    return found


COMMANDS = _named_commands()


def _words(command: str) -> list[str]:
    try:
        words = shlex.split(command)
    except ValueError:  # an unbalanced quote in a shortened example: plain words will do
        words = command.split()
    return words[1:]  # drop 'ws' / '.venv/bin/ws'


def _subcommand(parser: argparse.ArgumentParser, words: list[str]):
    """Walk the subcommands the words name: (path, the subcommand's parser, the words after it).

    Raises LookupError when a word where a subcommand is due is not one."""
    path: list[str] = []
    while True:
        parser.format_help()  # a parser that adds its arguments lazily (ws video's tools) adds them now
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            return path, parser, words
        if not words or words[0].startswith("-") or words[0] in ("...", "<graph>"):
            return path, parser, words  # a group named alone ('ws eval'): its --help lists the rest
        if words[0] not in subs[0].choices:
            raise LookupError(f"'ws {' '.join(path + [words[0]])}' is not a command "
                              f"(choices after 'ws {' '.join(path)}': {', '.join(subs[0].choices)})")
        parser = subs[0].choices[words[0]]
        path.append(words[0])
        words = words[1:]


def _check(parser: argparse.ArgumentParser, command: str) -> None:
    path, leaf, rest = _subcommand(parser, _words(command))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([*path, "--help"])
    assert exit_.value.code == 0, f"'ws {' '.join(path)} --help' exited {exit_.value.code}: {out.getvalue()}"
    known = leaf._option_string_actions
    for word in rest:
        word = word.strip("[]()")
        if re.fullmatch(r"--[A-Za-z][\w-]*(=.*)?", word) or re.fullmatch(r"-[A-Za-z]", word):
            option = word.split("=", 1)[0]
            assert option in known, f"'ws {' '.join(path)}' has no option {option}"


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return _build_parser()


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (at most {MAX_README_LINES})"


def test_readme_keeps_the_ci_test_command():
    """.ci/run runs the README's test command: the two must stay the same."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1].strip()
    assert ci in README.read_text(encoding="utf-8"), f"README.md does not show .ci/run's command: {ci}"


def test_commands_are_found():
    """The extraction sees the main job's command and commands in the docs pages."""
    named = [p.values[0] for p in COMMANDS]
    assert ".venv/bin/ws mppi run" in named
    assert any(p.id.startswith("docs/") for p in COMMANDS)


def test_a_missing_command_fails(parser):
    with pytest.raises(LookupError):
        _check(parser, "ws worldmodel experts train --clips data/clips.hdf5")
    with pytest.raises(AssertionError):
        _check(parser, "ws mppi run --no-such-option 3")
    text = "```bash\nws worldmodel experts train \\\n    --steps 3   # a comment\n```\nand `ws mppi run --env go1`\n"
    assert [" ".join(c.split()) for _, c in _bash_commands(text)] == ["ws worldmodel experts train --steps 3"]
    assert [c for _, c in _inline_commands(text)] == ["ws mppi run --env go1"]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_links_between_pages_resolve():
    """Every relative link in README.md and docs/*.md names a file that exists, and its #anchor a heading."""
    broken = []
    for path in DOC_FILES:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                broken.append(f"{path.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md":
                prose = re.sub(r"^\s*```.*?^\s*```", "", dest.read_text(encoding="utf-8"), flags=re.M | re.S)
                headings = re.findall(r"^#+\s+(.*)$", prose, flags=re.M)
                if anchor not in {_anchor(h) for h in headings}:
                    broken.append(f"{path.name}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


@pytest.mark.parametrize("command", COMMANDS)
def test_named_command_exists(parser, command):
    try:
        _check(parser, command)
    except LookupError as e:
        pytest.fail(str(e))
