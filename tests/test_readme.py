"""The README cannot drift from the code: every Python example in it is a
doctest that runs here (in order, as a reader would run them) and checks the
outputs it shows, and its set-up section holds exactly the two commands CI
and users run."""

import doctest
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")


def _python_blocks():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
        line = text.count("\n", 0, match.start()) + 1
        blocks.append((line, match.group(1)))
    return blocks


BLOCKS = _python_blocks()


def test_every_python_example_shows_what_it_prints():
    assert BLOCKS, "the README has no Python example"
    for line, code in BLOCKS:
        assert ">>> " in code, (f"README.md:{line}: a Python example must be a doctest "
                                "(>>> lines with the output they print), so that it is run")


def test_python_examples_run_and_print_what_they_show(tmp_path, monkeypatch):
    # The examples build on each other (a model wrapped in one is trained in
    # the next), as a reader runs them: in order, in one namespace.
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    namespace = {}
    for line, code in BLOCKS:
        test = parser.get_doctest(code, namespace, f"README.md:{line}", README, line)
        output = []
        runner.run(test, out=output.append, clear_globs=False)
        assert not runner.failures, "".join(output)
        namespace = test.globs


def test_setup_holds_exactly_the_two_commands():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^```sh\n(.*?)\n```", setup, re.S | re.M)
    assert len(commands) == 2, commands
    main, tests = commands
    assert "<!-- main-command -->" in setup and "<!-- test-command -->" in setup
    assert main.startswith("python3 -m venv .venv") and "python -m recsys.study" in main
    assert tests.startswith("python3 -m venv .venv") and "python -m pytest" in tests
