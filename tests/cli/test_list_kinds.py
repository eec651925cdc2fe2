"""``tunedet list KIND``: every registry kind by its English plural or singular."""

from __future__ import annotations

import pytest

from tunedet.cli.main import main, plural
from tunedet.config.registry import KINDS


def test_plural_is_plain_english():
    assert plural("box_loss") == "box_losses"
    assert plural("cls_loss") == "cls_losses"
    assert plural("lr_policy") == "lr_policies"
    assert plural("anchor_generator") == "anchor_generators"
    assert plural("warmup") == "warmups"
    assert plural("box_coder") == "box_coders"


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_lists_by_plural_and_singular(kind: str, capsys):
    assert main(["list", plural(kind)]) == 0
    by_plural = capsys.readouterr().out
    assert main(["list", kind]) == 0
    assert capsys.readouterr().out == by_plural
    assert by_plural.strip(), kind  # every kind has registered components


def test_list_names_kinds_in_plural_and_accepts_hyphens(capsys):
    assert main(["list"]) == 0
    kinds = capsys.readouterr().out
    assert "box_losses" in kinds and "lr_policies" in kinds and "box_losss" not in kinds
    assert main(["list", "box-losses"]) == 0
    assert "giou" in capsys.readouterr().out


def test_unknown_kind_is_one_line_with_a_suggestion(capsys):
    assert main(["list", "box_losss"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "did you mean" in err
