"""Every flag of every `latemm` command has help text, and the help states the flag's default
(issue #32: --dpi, --max-pixels, --k, --out, --batch-size had none)."""

from __future__ import annotations

import argparse

from latemm.cli import build_parser


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_flag_has_help_with_its_default() -> None:
    missing, no_default = [], []
    for name, command in _commands().items():
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = f"latemm {name} {'/'.join(action.option_strings) or action.dest}"
            if not action.help:
                missing.append(flag)
                continue
            has_default = action.default not in (None, False, argparse.SUPPRESS, [])
            if action.option_strings and has_default:
                text = command._get_formatter()._expand_help(action)
                values = action.default if isinstance(action.default, list) else [action.default]
                if "default" not in text or any(str(v) not in text for v in values):
                    no_default.append(f"{flag} ({action.default!r}): {text}")
    assert not missing, "flags without help:\n" + "\n".join(missing)
    assert not no_default, "help without the default:\n" + "\n".join(no_default)
