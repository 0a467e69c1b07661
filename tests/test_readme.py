"""The README's Python examples run and print what the README says they print."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_examples():
    blocks = [b for b in python_blocks() if b.lstrip().startswith(">>>")]
    assert blocks, "the README has no runnable example"
    parser, runner = (
        doctest.DocTestParser(),
        doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE),
    )
    for i, block in enumerate(blocks):
        test = parser.get_doctest(block, {}, f"README block {i}", str(README), 0)
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def cli_commands() -> list[str]:
    """The `python -m backprop ...` lines of the README's bash blocks, comments stripped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("python -m backprop"):
                commands.append(line)
    return commands


def test_readme_cli_commands_run(tmp_path, monkeypatch, capsys):
    """Every command-line example in the README runs: in order, in a scratch directory, with
    the network replaced by an offline stub (full MNIST then fails at once, clearly) and the
    GPU command expected to succeed or to fail with the clear no-device error."""
    import shlex
    import urllib.error

    from backprop import datasets
    from backprop.cli import main

    def offline(url):
        raise urllib.error.URLError("offline in the tests")

    monkeypatch.setattr(datasets, "_fetch", offline)
    monkeypatch.setenv("BACKPROP_DATA", str(tmp_path / "mnist-cache"))
    monkeypatch.chdir(tmp_path)
    commands = cli_commands()
    assert len(commands) >= 6
    for command in commands:
        argv = shlex.split(command)[3:]
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        err = capsys.readouterr().err
        if "--dataset" in argv and "mnist" in argv:
            assert code == 2 and "Without a network, put the four MNIST files" in err, command
        elif "cupy" in argv and code != 0:
            assert code == 2 and "'cupy' backend" in err, command
        else:
            assert code == 0, f"{command}: {err}"
    assert (tmp_path / "model.npz").exists() and (tmp_path / "curves-misclassified.png").exists()
