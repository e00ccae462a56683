"""The command line's structure: one parser function and one handler per command."""

import argparse

from bigmm.pipeline import cli


def _subcommands(parser: argparse.ArgumentParser) -> dict:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def test_every_command_has_a_handler_and_nothing_else_does():
    """Each subcommand of ``bigmm`` is run by a handler of _COMMANDS, and every handler belongs to
    a subcommand (a command added to the parser without one would reach the AssertionError)."""
    assert set(_subcommands(cli.build_parser())) == set(cli._COMMANDS)


def test_reml_flags_come_in_their_groups_in_order():
    """``bigmm reml --help`` lists its flags in the groups inputs, filters, model, compute, in that
    order, with --force last among the options."""
    reml = _subcommands(cli.build_parser())["reml"]
    titles = [g.title for g in reml._action_groups if g._group_actions]
    assert titles[-4:] == ["inputs", "sample and variant filters", "model and methods", "compute"]
    groups = {g.title: [a.option_strings[0] for a in g._group_actions] for g in reml._action_groups}
    assert groups["inputs"][0] == "--bfile" and groups["inputs"][-1] == "--out"
    assert groups["compute"] == ["--workers", "--threads", "--memory"]
    assert reml._actions[-1].option_strings == ["--force"]
