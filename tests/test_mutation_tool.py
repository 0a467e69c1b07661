"""bench/mutation.py, the mutation-testing tool (its runs take minutes: not here): the
scratch copy's configuration, the score, and its argument check."""

from __future__ import annotations

from fnmatch import fnmatch

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
    names = (
        "optimizers, saving, callbacks, training, layers, training-guard, layers-dense, "
        "training-rest, layers-rest"
    )
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


@pytest.mark.parametrize("module", ["training", "layers"])
def test_a_modules_parts_take_each_of_its_mutants_once(module):
    """The REST part takes what the others leave: together they run every mutant of the
    module, none twice."""
    pytest.importorskip("mutmut")
    names = [f"backprop.{module}.{name}" for name in mutation.mutant_names(module)]
    parts = [p for p, (m, _) in mutation.PARTS.items() if m == module]
    assert len(parts) == 2 and len(names) > 1000
    taken = []
    for part in parts:
        patterns = mutation.patterns(part)  # one generation of the mutants per part
        taken.append([n for n in names if any(fnmatch(n, p) for p in patterns)])
    assert sorted(taken[0] + taken[1]) == sorted(names)
    assert min(len(t) for t in taken) > 300
