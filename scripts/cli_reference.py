"""Write docs/cli.md, the reference of every ``gpunn`` command and flag, from the parser itself.

    python scripts/cli_reference.py            # rewrite docs/cli.md
    python scripts/cli_reference.py --check    # exit 1 when docs/cli.md is out of date

The page is made from the argparse definitions in ``gpunn/cli`` (the same help texts as
``gpunn COMMAND --help``, as tables rather than terminal text), so it cannot drift from them:
``tests/test_cli.py`` runs the check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "cli.md"
HEADER = """# Command-line reference

Every command and flag of `gpunn`, as `gpunn COMMAND --help` shows them. A value in square
brackets at the end of a description is the default. This page is generated from the parser by
`python scripts/cli_reference.py`; a test checks that it is up to date.
"""


def _flag(action: argparse.Action) -> str:
    """``--lr ETA`` or ``--backend {auto,numpy,cupy}`` or ``MODEL``."""
    if not action.option_strings:
        return f"`{action.metavar or action.dest.upper()}`"
    names = ", ".join(action.option_strings)
    if action.nargs == 0:
        return f"`{names}`"
    if action.metavar is not None:
        value = action.metavar
    elif action.choices is not None:
        value = "{" + ",".join(map(str, action.choices)) + "}"
    else:
        value = action.dest.upper()
    return f"`{names} {value}`"


def _cell(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _command_section(name: str, parser: argparse.ArgumentParser) -> list[str]:
    lines = [f"## gpunn {name}", "", _cell(parser.description), ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help is not argparse.SUPPRESS
                   and not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        lines += [f"### {group.title}", "", "| flag | what it does |", "|---|---|"]
        lines += [f"| {_flag(a)} | {_cell(a.help)} |" for a in actions]
        lines.append("")
    if parser.epilog:
        lines += ["```text", parser.epilog.strip("\n"), "```", ""]
    return lines


def render() -> str:
    """docs/cli.md as it should read now."""
    sys.path.insert(0, str(ROOT))
    from gpunn.cli import build_parser

    parser = build_parser("bench")  # with the bench flags
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = [HEADER, "## gpunn", "", _cell(parser.description), "", "| flag | what it does |",
             "|---|---|"]
    lines += [f"| {_flag(a)} | {_cell(a.help)} |" for a in parser._actions
              if a.option_strings and not isinstance(a, argparse._HelpAction)]
    lines.append("")
    for name, sub in commands.choices.items():
        lines += _command_section(name, sub)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--check", action="store_true", help="only check that the page is current")
    check = args.parse_args(argv).check
    text = render()
    if check:
        current = PAGE.read_text(encoding="utf-8") if PAGE.exists() else ""
        if current != text:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run python scripts/cli_reference.py",
                  file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
