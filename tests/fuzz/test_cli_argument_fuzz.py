"""Hypothesis over the command line: every subcommand (found from the parser) with its
positionals drawn from bad paths (missing, a folder, empty, garbage bytes, a search-space
file where a config is wanted, deeply nested YAML, a NUL byte), random dotted overrides,
and its options given random values. Every example ends with exit code 2 and one line
``tunedet ...: error: ...`` (argparse's usage errors: the usage, then that line), or exit 0
where the input happens to be fine (``list``), never a traceback.

Commands that do long legitimate work on inputs they accept (``demo``, ``data synth``)
and ``analyze focal`` (no input at all) are left out. Runs in-process; examples are
derandomised and bounded (``FUZZ_EXAMPLES`` raises the count).
"""

from __future__ import annotations

import contextlib
import io
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunedet.cli.main import build_parser, main

from .test_config_fuzz import overrides

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
LEFT_OUT = {("demo",), ("data", "synth"), ("analyze", "focal")}


def leaf_parsers() -> dict[tuple[str, ...], object]:
    """``{(command, [subcommand]): parser}`` for every runnable command."""
    out = {}

    def walk(parser, prefix):
        subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not subs:
            out[prefix] = parser
            return
        for name, child in subs[0].choices.items():
            walk(child, (*prefix, name))

    walk(build_parser(), ())
    return {k: v for k, v in sorted(out.items()) if k not in LEFT_OUT}


PARSERS = leaf_parsers()


@pytest.fixture(scope="module")
def bad_paths(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("bad")
    (root / "folder").mkdir()
    (root / "empty.yaml").write_text("")
    (root / "garbage.pt").write_bytes(bytes(range(256)) * 4)
    (root / "list.json").write_text("[1, 2, 3]")
    (root / "text.yaml").write_text("just a sentence\n")
    (root / "space.yaml").write_text("metric: AP\nparams:\n  optim.lr: {float: [0.001, 0.1]}\n")
    (root / "deep.yaml").write_text("a: " + "[" * 20_000 + "]" * 20_000 + "\n")
    names = ["missing.yaml", "folder", "empty.yaml", "garbage.pt", "list.json", "text.yaml"]
    names += ["space.yaml", "deep.yaml", "folder/missing/deeper.pt"]
    return [str(root / n) for n in names] + ["", "-", "nul\x00byte", "ünïcødé/✓.yaml"]


option_values = st.one_of(
    st.sampled_from(["-1", "0", "1", "2", "nan", "inf", "1e400", "-0.5", "3.5", "abc", ""]),
    st.text(max_size=8).filter(lambda s: not s.startswith("-")),
)


@st.composite
def command_lines(draw, bad: list[str]) -> list[str]:
    command = draw(st.sampled_from(sorted(PARSERS)))
    parser = PARSERS[command]
    argv = list(command)
    for action in parser._actions:
        if action.dest == "help":
            continue
        if not action.option_strings:  # positionals: bad paths, random overrides or words
            if action.dest == "overrides":
                argv += draw(st.lists(overrides, max_size=2))
            elif action.choices:
                argv.append(draw(st.sampled_from([*map(str, action.choices), "nope"])))
            elif action.dest == "kind":
                argv.append(draw(st.one_of(st.text(max_size=10), st.just("box_losses"))))
            else:
                count = 2 if action.nargs == "+" and draw(st.booleans()) else 1
                argv += [draw(st.sampled_from(bad)) for _ in range(count)]
        elif draw(st.booleans()):
            argv.append(action.option_strings[-1])
            if action.nargs != 0:
                argv.append(draw(st.one_of(st.sampled_from(bad), option_values)))
    return argv


@FUZZ
@given(data=st.data())
def test_random_command_lines_end_in_one_line(data, bad_paths, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written by default goes to a scratch folder
    argv = data.draw(command_lines(bad_paths), label="argv")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse: usage, then one error line
            code = stop.code
    text = err.getvalue()
    assert "Traceback" not in text, text
    assert code in (0, 2), (code, text)
    if code == 2:
        lines = [line for line in text.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("tunedet") and "error: " in lines[-1], text
        if not text.startswith("usage:"):
            assert len(lines) == 1, text


def test_every_command_is_fuzzed():
    assert {("train",), ("eval",), ("tune",), ("list",), ("analyze", "anchors")} <= set(PARSERS)
