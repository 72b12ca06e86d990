"""The documentation against the repository (no Spark): README.md, docs/*.md and bench/README.md.

Every relative link resolves to a file (and its #anchor to a heading there), every ``sparkvision <command>``
in a command block is one the CLI has (read from its argparse parser), every ``make <target>`` is one the
Makefile has, and README.md stays short.
"""

from __future__ import annotations

import argparse
import re
import shlex
import unicodedata
from pathlib import Path

import pytest
import yaml

from sparkvision.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
README_MAX_LINES = 250

FENCE = re.compile(r"^(```|~~~)")
SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh"}
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;", "|&"}
WRAPPERS = {"time", "sudo", "env", "exec", "nohup", "command"}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _split_fences(text: str) -> tuple[str, list[tuple[str, list[str]]]]:
    """``(prose, blocks)``: the text with fenced blocks blanked out, and each block as (language, lines)."""
    prose, blocks, current, lang = [], [], None, ""
    for line in text.splitlines():
        if current is None and FENCE.match(line.strip()):
            current, lang = [], line.strip()[3:].strip().split(" ")[0].lower()
            prose.append("")
        elif current is not None and FENCE.match(line.strip()):
            blocks.append((lang, current))
            current = None
            prose.append("")
        elif current is not None:
            current.append(line)
            prose.append("")
        else:
            prose.append(line)
    assert current is None, "unclosed code fence"
    return "\n".join(prose), blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: code marks and punctuation dropped, lower case, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.replace("`", "").strip().lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose, _ = _split_fences(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for line in prose.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links_in(text: str) -> list[str]:
    """The targets of the Markdown links and images in ``text`` (prose, not code)."""
    return LINK.findall(INLINE_CODE.sub("", text))


def links(path: Path) -> list[str]:
    return links_in(_split_fences(path.read_text(encoding="utf-8"))[0])


def _choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _first_positional_choices(parser: argparse.ArgumentParser) -> list[str] | None:
    """``cluster conf``, ``bundle validate``, ``databricks submit``: the choices of a command's first positional."""
    for action in parser._actions:
        if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
            return list(action.choices) if action.choices else None
    return None


COMMANDS = _choices(build_parser())


def makefile_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-][A-Za-z0-9_.\- ]*?)\s*:(?!=)", line)
        if m and not line.startswith("\t"):
            targets.update(t for t in m.group(1).split() if not t.startswith("."))
    return targets


def _logical_lines(lines: list[str]) -> list[str]:
    out, buf = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
        else:
            out.append(buf + line)
            buf = ""
    if buf:
        out.append(buf)
    return out


def _segments(line: str) -> list[list[str]]:
    """The simple commands of a shell line, as token lists (comments dropped)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    segments, current = [], []
    for token in lexer:
        if token in SEPARATORS:
            segments.append(current)
            current = []
        else:
            current.append(token)
    segments.append(current)
    return [s for s in segments if s]


def _program(tokens: list[str]) -> tuple[str, list[str]]:
    """The program a simple command runs (``.venv/bin/sparkvision`` -> ``sparkvision``) and its arguments."""
    i = 0
    while i < len(tokens) and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[i]) or tokens[i] in WRAPPERS):
        i += 1
    if i == len(tokens):
        return "", []
    return tokens[i].rsplit("/", 1)[-1], tokens[i + 1:]


def shell_commands() -> list[tuple[str, str, list[str]]]:
    """``(page, program, args)`` for every simple command in the pages' shell blocks."""
    out = []
    for page in PAGES:
        _, blocks = _split_fences(page.read_text(encoding="utf-8"))
        for lang, lines in blocks:
            if lang not in SHELL_LANGS:
                continue
            for line in _logical_lines(lines):
                for tokens in _segments(line):
                    program, args = _program(tokens)
                    if program:
                        out.append((_rel(page), program, args))
    return out


def _check_sparkvision(args: list[str]) -> str | None:
    """What is wrong with ``sparkvision ARGS`` (None: the command, and its action where it has one, exist)."""
    if not args or args[0].startswith("-"):
        return None  # sparkvision --help
    command = args[0]
    if command not in COMMANDS:
        return f"sparkvision has no command {command!r} (it has {sorted(COMMANDS)})"
    actions = _first_positional_choices(COMMANDS[command])
    rest = [a for a in args[1:] if not a.startswith("-")]
    if actions and rest and rest[0] not in actions:
        return f"'sparkvision {command}' has no {rest[0]!r} (it has {actions})"
    if command == "submit" and "--" in args:  # sparkvision submit ... -- run --images ...
        return _check_sparkvision(args[args.index("--") + 1:])
    return None


def test_readme_is_short_and_opens_with_the_two_commands():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    _, blocks = _split_fences(text)
    first = [line.split("#")[0].strip() for line in blocks[0][1]]
    assert first == ["make demo", "make test"], first
    assert text.index("```") < text.index("\n## "), "README opens with the two commands"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_relative_link_resolves(page):
    assert page.exists(), page
    bad = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {_rel(dest)}")
    assert bad == [], f"{_rel(page)}: {bad}"


def test_every_sparkvision_command_in_a_command_block_exists():
    runs = [(page, args) for page, program, args in shell_commands() if program == "sparkvision"]
    assert len(runs) >= 10, "the pages show sparkvision commands"
    bad = [f"{page}: sparkvision {' '.join(args)}: {why}" for page, args in runs
           if (why := _check_sparkvision(args))]
    assert bad == []


def test_every_make_target_in_a_command_block_exists():
    targets = makefile_targets()
    assert {"demo", "test", "bench", "bench-scale", "bench-stream", "bench-smoke"} <= targets
    named = [(page, arg) for page, program, args in shell_commands() if program == "make"
             for arg in args if not arg.startswith("-") and "=" not in arg]
    assert named, "the pages show make commands"
    bad = [f"{page}: make {arg}" for page, arg in named if arg not in targets]
    assert bad == []


def test_commands_named_in_the_text_exist():
    """``make TARGET`` and ``sparkvision COMMAND`` in inline code, and in command blocks' comments, too."""
    targets, bad = makefile_targets(), []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        spans = [m.group(2) for m in INLINE_CODE.finditer(_split_fences(text)[0])]
        spans += [line.split("#", 1)[1] for _, lines in _split_fences(text)[1] for line in lines if "#" in line]
        for span in spans:
            for target in re.findall(r"(?<![\w.-])make ([a-z][a-z0-9-]*)", span):
                if target not in targets:
                    bad.append(f"{_rel(page)}: make {target}")
            for command in re.findall(r"(?<![\w.-])sparkvision ([a-z][a-z0-9-]*)", span):
                if command not in COMMANDS:
                    bad.append(f"{_rel(page)}: sparkvision {command}")
    assert bad == []


def test_paths_and_modules_named_in_the_text_exist():
    """``tests/e2e/test_football.py``, ``infra/clusters/``, ``sparkvision.run.listing``,
    ``sparkvision.ml.logistic.LogisticModel``: files, modules and their top-level names, after any move."""
    src, bad = ROOT / "src", []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for path in re.findall(r"`((?:src|tests|infra|jobs|examples|bench|docs|\.ci)/[\w./-]*)`", text):
            if not (ROOT / path).exists():
                bad.append(f"{_rel(page)}: {path}")
        for dotted in set(re.findall(r"(?<![\w./])sparkvision(?:\.[A-Za-z_]\w*)+", text)):
            parts = dotted.split(".")
            for i in range(len(parts), 0, -1):
                base = src.joinpath(*parts[:i])
                module = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
                if module.exists():
                    rest = parts[i:]
                    if rest and not re.search(rf"^(def|class)\s+{rest[0]}\b|^{rest[0]}\s*[:=]", module.read_text(),
                                              re.M):
                        bad.append(f"{_rel(page)}: {dotted} ({rest[0]} not in {_rel(module)})")
                    break
            else:
                bad.append(f"{_rel(page)}: {dotted}")
    assert bad == []


def test_every_config_key_is_documented():
    documented = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    example = yaml.safe_load((ROOT / "examples" / "config.yml").read_text(encoding="utf-8"))
    keys = [f"{section}.{key}" for section, values in example.items() for key in values]
    assert len(keys) > 40
    assert [k for k in keys if f"`{k}`" not in documented] == []


def test_the_checks_read_what_they_should():
    assert slug("Input: what `load` accepts and rejects") == "input-what-load-accepts-and-rejects"
    assert slug("What `python -m bench featurize` measures") == "what-python--m-bench-featurize-measures"
    assert _program(["PYSPARK_PYTHON=x", ".venv/bin/sparkvision", "run"]) == ("sparkvision", ["run"])
    assert _segments("make a && b c # d") == [["make", "a"], ["b", "c"]]
    assert _check_sparkvision(["bundle", "validate", "--target", "prod"]) is None
    assert _check_sparkvision(["bundle", "deploy"]) is not None
    assert _check_sparkvision(["submit", "--cluster-spec", "ci", "--", "fly"]) is not None
    assert _check_sparkvision(["fly"]) is not None
    assert links_in("[a](b.md#c) `[x](y)` ![i](p.png)") == ["b.md#c", "p.png"]
