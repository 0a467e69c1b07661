"""bench/mutation.py, the mutation-testing tool (its runs take minutes: not here): the
scratch copy's configuration, the score, and its argument check."""

from __future__ import annotations

import pytest

from bench import mutation

tomllib = pytest.importorskip("tomllib")  # Python 3.11 on


def test_a_module_gets_a_scratch_copy_that_mutates_only_it(tmp_path):
    workdir = tmp_path / "saving"
    mutation.configure("saving", workdir)
    config = tomllib.loads((workdir / "pyproject.toml").read_text())["tool"]["mutmut"]
    assert config["only_mutate"] == ["backprop/saving.py"]
    assert config["pytest_add_cli_args_test_selection"] == list(mutation.MODULES["saving"])
    assert config["source_paths"] == ["backprop"]
    for test_file in config["pytest_add_cli_args_test_selection"]:
        assert (workdir / test_file).is_file()
    assert (workdir / "backends" / "base.py").is_file()
    assert (workdir / "backprop" / "saving.py").read_text() == (
        mutation.ROOT / "backprop" / "saving.py"
    ).read_text()


def test_score_counts_timeouts_as_killed_and_untested_mutants_as_survivors():
    statuses = {"a": "killed", "b": "timeout", "c": "survived", "d": "no tests", "e": "skipped"}
    value, counts = mutation.score(statuses)
    assert value == 50.0 and counts["killed"] == 1 and counts["skipped"] == 1


def test_unknown_modules_are_refused(capsys):
    with pytest.raises(SystemExit) as caught:
        mutation.main(["network"])
    assert caught.value.code == 2
    names = "optimizers, saving, callbacks, training, layers, training-guard, layers-dense"
    assert f"modules must be among {names}, got network" in capsys.readouterr().err


def test_every_test_a_selection_names_exists():
    """The selections name files and tests (node ids, and tests left out with --deselect): a
    renamed test would otherwise quietly drop out of a module's run."""
    for module, selection in mutation.MODULES.items():
        for arg in selection:
            if arg == "--deselect":
                continue
            path, _, test = arg.partition("::")
            source = (mutation.ROOT / path).read_text()
            assert not test or f"def {test}(" in source, (module, arg)


def test_the_scratch_copy_leaves_mutmuts_method_copies_to_the_public_methods(tmp_path):
    """In the scratch copy only, on_backend_device skips mutmut's copies of methods (names
    with "ǁ"), whose __init__ copies would look for the backend before it is set."""
    workdir = tmp_path / "training"
    mutation.configure("training", workdir)
    base = (workdir / "backends" / "base.py").read_text()
    assert 'name.startswith("_") or "ǁ" in name or name == "device_context"' in base
    assert "ǁ" not in (mutation.ROOT / "backends" / "base.py").read_text()
    for part in ("training-guard", "layers-dense"):
        module, patterns = mutation.PARTS[part]
        assert module in mutation.MODULES
        assert all(p.startswith(f"backprop.{module}.") for p in patterns)
