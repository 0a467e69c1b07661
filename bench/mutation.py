"""Mutation testing of the training bookkeeping: `python -m bench.mutation [module ...]`

Runs mutmut (configured in pyproject.toml's [tool.mutmut]) on each named module of
backprop/ (default: training, callbacks, saving, optimizers, layers), each against its own
fast subset of the tests (MODULES below; NumPy backend only), and prints every mutant that
survived and the score per module: killed / (killed + survived). Each module runs in its
own scratch copy of the project under build/mutation/<module>/, so runs never touch the
working tree and one module's results do not mix with another's.

Not part of CI: on two shared cores, optimizers takes some 3 minutes, saving 10, callbacks
about 25 (its tests: test_training, test_trainer and the callback tests of three other
files); training's 1,342 mutants would take hours (every test reaches `fit`), so it is run
by parts: `--only PATTERN ...` mutates just the mutants whose mutmut names match, and
`training-guard` (PARTS below: the divergence guard and the fit's bookkeeping, 352 mutants)
took some 20 to 25 minutes, and `layers-dense` (the Layer protocol and Dense, 378 mutants)
17; `training-rest` and `layers-rest` take every mutant the other part of their module
leaves. A surviving mutant gets a test, or a one-line reason in the README's Development
section.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / "build" / "mutation"
COPIED = ("backends", "backprop", "bench", "tests", "examples", "pyproject.toml")

# module -> the tests that should kill its mutants (fast ones: mutmut runs, for each mutant,
# those of them that reach the mutated function)
MODULES: dict[str, tuple[str, ...]] = {
    "optimizers": (
        "tests/test_optimizers.py",
        "tests/test_backend_optimizers.py",
        "tests/test_saving.py",
    ),
    "saving": ("tests/test_saving.py", "tests/test_properties.py"),
    # the callbacks' own tests, wherever they are (not the whole of those files: nearly every
    # test reaches CallbackList, and each surviving mutant there runs them all)
    "callbacks": (
        "tests/test_training.py",
        "tests/test_trainer.py",
        *(
            f"tests/test_reliability.py::test_{name}"
            for name in (
                "checkpoint_pattern_with_an_unknown_field_fails_when_training_starts",
                "checkpoint_monitoring_a_missing_figure_fails_when_training_starts",
                "checkpoint_into_a_missing_directory_creates_it",
                "a_file_without_write_permission_is_kept_even_as_root",
                "csv_logger_appends_each_fit_under_the_files_own_header",
                "csv_logger_refuses_to_append_figures_the_file_has_no_column_for",
                "checkpoint_of_a_model_that_cannot_be_saved_fails_when_training_starts",
                "a_path_ending_in_a_slash_is_refused_before_training",
                "numpy_scalars_are_numbers_in_fit_and_its_callbacks",
            )
        ),
        *(
            f"tests/test_keras.py::test_{name}"
            for name in (
                "fit_verbose_auto_and_initial_epoch",
                "learning_rate_scheduler_takes_one_argument_functions",
                "reduce_lr_on_plateau",
                "csv_logger_writes_one_row_per_epoch",
                "batch_hooks_run_between_steps_and_read_only_when_asked",
                "batch_hooks_turn_a_captured_epoch_into_steps",
                "model_checkpoint_keras_arguments",
                "callback_messages_with_verbose",
                "learning_rate_is_logged_only_by_learning_rate_callbacks",
            )
        ),
        *(
            f"tests/test_trace.py::test_{name}"
            for name in (
                "gradient_norms_are_the_epoch_means_of_the_traced_values",
                "a_recorded_epoch_is_replayed_only_with_the_same_step_work",
                "gradient_norms_are_logged_columns_and_stay_out_of_the_progress_line",
                "gradient_norms_needs_a_layer_with_weights",
                "no_step_work_is_left_behind_when_a_callback_refuses_to_start",
            )
        ),
    ),
    # every test here reaches fit, so each surviving mutant runs them all: the slowest few,
    # (slow for what they reach) are left out
    "training": (
        "tests/test_training.py",
        "tests/test_reliability.py",
        "tests/test_trainer.py",
        "tests/test_threaded_ranks.py",  # the data-parallel steps, in-process
        "tests/test_epoch_function.py",  # the epoch's steps, their cache and what may record
        "tests/test_batches.py",  # an epoch's pass against its batches stepped by hand
        *(
            arg
            for test in (
                "test_training.py::test_same_seed_same_run",
                "test_trainer.py::test_graph_size_does_not_grow_with_the_data",
                "test_reliability.py::test_diverged_training_is_a_one_line_error_not_a_traceback",
                "test_reliability.py::test_plot_without_extension_says_the_files_it_wrote",
                "test_reliability.py::test_plotting_leaves_the_users_matplotlib_backend_alone",
                "test_reliability.py::test_plot_format_matplotlib_lacks_is_refused_before_training",
            )
            for arg in ("--deselect", f"tests/{test}")
        ),
    ),
    # every test here reaches Dense's forward and backward, so each surviving mutant runs
    # them all: the slowest (the examples and tutorials that train for seconds, and the
    # captured epochs) are left out
    "layers": (
        "tests/test_keras.py",
        "tests/test_backprop.py",
        "tests/test_saving.py",
        "tests/test_normalization_layers.py",  # Normalization and BatchNormalization, by hand
        "tests/test_layers.py",  # the other layers' arguments, configs, out= and workspaces
        *(
            arg
            for test in (
                "test_keras.py::test_the_tutorials_keras_block_runs_and_learns",
                "test_keras.py::test_keras_mlp_program_runs_unchanged_but_its_imports",
                "test_keras.py::test_keras_binary_logits_example",
                "test_keras.py::test_keras_kfold_regression_example",
                "test_keras.py::test_dropout_in_a_captured_epoch_equals_eager",
                "test_keras.py::test_batch_normalization_in_a_captured_epoch_equals_eager",
                "test_keras.py::test_frozen_layers_in_a_captured_epoch",
                "test_keras.py::test_weighted_fit_captured_equals_eager",
                "test_saving.py::test_temporaries_of_live_writers_are_kept",
            )
            for arg in ("--deselect", f"tests/{test}")
        ),
    ),
}
# the patterns of a part that takes every mutant of its module no other part names
REST = ("<the rest>",)
# parts of a module, run as a module of their own (`python -m bench.mutation training-guard`):
# name -> (module, the mutmut names of its mutants, fnmatch patterns, or REST)
PARTS: dict[str, tuple[str, tuple[str, ...]]] = {
    # the divergence guard and the fit's bookkeeping: 352 of training.py's 1,342 mutants
    "training-guard": (
        "training",
        (
            "backprop.training.x_exploded__mutmut_*",
            "backprop.training.x_check_batch_size__mutmut_*",
            "backprop.training.x_check_fit_args__mutmut_*",
            "backprop.training.xǁ_ExplosionCheckǁ*",
            *(
                f"backprop.training.xǁTrainerǁ{name}__mutmut_*"
                for name in (
                    "_recover",
                    "_batch_failure",
                    "_finite",
                    "restore",
                    "snapshot",
                    "_params",
                    "_epochs",
                    "run_epoch",
                    "train_step",
                    "test_step",
                    "_metric_values",
                )
            ),
        ),
    ),
    # the Layer protocol's bookkeeping and Dense: weights, get/set_weights, config, build,
    # forward and backward, the regularizers' terms (378 of layers.py's 1,384 mutants; not
    # Dense's argument checks in __init__, nor the NotImplementedError stubs)
    "layers-dense": (
        "layers",
        (
            *(
                f"backprop.layers.xǁLayerǁ{name}__mutmut_*"
                for name in (
                    "__init__",
                    "__repr__",
                    "bind",
                    "build",
                    "config",
                    "count_params",
                    "describe",
                    "from_config",
                    "get_config",
                    "get_weights",
                    "set_weights",
                    "trainable_mask",
                )
            ),
            *(
                f"backprop.layers.xǁ_ActivationCacheǁ{name}__mutmut_*"
                for name in ("_ws_delta", "_ws_loss_gradient", "backward", "output_backward")
            ),
            *(
                f"backprop.layers.xǁDenseǁ{name}__mutmut_*"
                for name in (
                    "_workspace",
                    "backward_delta",
                    "build",
                    "compute_output_shape",
                    "config",
                    "forward",
                    "l2_cost",
                    "release_input",
                )
            ),
        ),
    ),
    # the rest of each: training's batches, epochs, evaluation and data-parallel steps;
    # layers' argument checks, Activation, Dropout, the normalizations, Flatten and Input
    "training-rest": ("training", REST),
    "layers-rest": ("layers", REST),
}
# how mutmut reports a mutant's fate (`mutmut results --all true`)
_RESULT = re.compile(r"^\s*(backprop\.\S+):\s*(.+?)\s*$")


def mutant_names(module: str) -> list[str]:
    """Every mutant mutmut makes of backprop/<module>.py, by its name without the module
    ("xǁTrainerǁfit__mutmut_3")."""
    from mutmut.mutation.file_mutation import mutate_file_contents

    path = ROOT / "backprop" / f"{module}.py"
    return list(mutate_file_contents(str(path), path.read_text()).mutant_names)


def patterns(part: str) -> tuple[str, ...]:
    """The mutmut names a part runs: its own patterns, or for a REST part one pattern per
    mutated function that no other part of its module names."""
    module, own = PARTS[part]
    if own != REST:
        return own
    taken = [p for m, ps in PARTS.values() if m == module and ps != REST for p in ps]
    functions = dict.fromkeys(
        name.rpartition("__mutmut_")[0]
        for name in mutant_names(module)
        if not any(fnmatch(f"backprop.{module}.{name}", p) for p in taken)
    )
    return tuple(f"backprop.{module}.{function}__mutmut_*" for function in functions)


def _toml_list(items: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def configure(module: str, workdir: Path) -> None:
    """A scratch copy of the project whose [tool.mutmut] mutates only `module` and runs only
    its tests."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, workdir / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, workdir / name)
    config = (ROOT / "pyproject.toml").read_text()
    replacements = {
        "only_mutate": _toml_list([f"backprop/{module}.py"]),
        "pytest_add_cli_args_test_selection": _toml_list(MODULES[module]),
    }
    for key, value in replacements.items():
        config, found = re.subn(
            rf"^{key} = \[.*?\]", f"{key} = {value}", config, count=1, flags=re.M | re.S
        )
        if not found:
            raise SystemExit(f"pyproject.toml's [tool.mutmut] has no {key}")
    (workdir / "pyproject.toml").write_text(config)
    _skip_mutant_copies(workdir / "backends" / "base.py")


def _skip_mutant_copies(base: Path) -> None:
    """mutmut keeps each mutant of a method in the class under a public-looking name
    (`xǁTrainerǁ__init____mutmut_1`); `on_backend_device` would wrap those too, and an
    `__init__` copy would then look for the backend before it has set it. In the scratch copy
    only, the decorator leaves them alone (they run inside the public method that calls them,
    which it still wraps)."""
    text = base.read_text()
    old = 'if name.startswith("_") or name == "device_context":'
    if old not in text:
        raise SystemExit(f"{base}: on_backend_device's test of a method's name has changed")
    base.write_text(
        text.replace(old, 'if name.startswith("_") or "ǁ" in name or name == "device_context":')
    )


def results(workdir: Path) -> dict[str, str]:
    """Each mutant's name -> its status (killed, survived, timeout, no tests, ...)."""
    done = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    )
    found = (_RESULT.match(line) for line in done.stdout.splitlines())
    return {m.group(1): m.group(2) for m in found if m}


def score(statuses: dict[str, str]) -> tuple[float, Counter[str]]:
    """killed (timeouts count as killed, as mutmut counts them) / (killed + survived + no
    tests): the mutants a test ran against, plus those no test reached."""
    counts = Counter(statuses.values())
    killed = counts["killed"] + counts["timeout"]
    tested = killed + counts["survived"] + counts["no tests"]
    return (100.0 * killed / tested if tested else 0.0), counts


def run(
    module: str, max_children: int, only: tuple[str, ...] = ()
) -> tuple[float, Counter[str], list[str]]:
    """Mutate `module` in a fresh scratch copy; `only`: just the mutants whose names match
    one of these patterns (mutmut's, fnmatch: "backprop.training.x_exploded*"), scored alone."""
    workdir = SCRATCH / module
    configure(module, workdir)
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *only]
    subprocess.run(command, cwd=workdir, check=True, stdout=subprocess.DEVNULL)
    statuses = results(workdir)
    if only:
        statuses = {n: s for n, s in statuses.items() if any(fnmatch(n, p) for p in only)}
    value, counts = score(statuses)
    survivors = sorted(f"{name} ({s})" for name, s in statuses.items() if s != "killed")
    return value, counts, survivors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mutation", description=__doc__)
    names = [*MODULES, *PARTS]
    parser.add_argument(
        "modules", nargs="*", help=f"any of {', '.join(names)} (default: all modules)"
    )
    parser.add_argument("--max-children", type=int, default=2, help="parallel test runs")
    parser.add_argument(
        "--only",
        nargs="+",
        default=(),
        metavar="PATTERN",
        help='only the mutants matching these mutmut names ("backprop.training.x_exploded*")',
    )
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in names]
    if unknown:
        parser.error(f"modules must be among {', '.join(names)}, got {', '.join(unknown)}")
    lines = []
    for name in args.modules or list(MODULES):
        if name in PARTS:
            module, only = PARTS[name][0], patterns(name)
        else:
            module, only = name, tuple(args.only)
        value, counts, survivors = run(module, args.max_children, only)
        for mutant in survivors:
            print(f"{name}: {mutant}")
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        part = f" ({name})" if name in PARTS else ""
        lines.append(f"backprop/{module}.py{part}: {value:.1f}% killed ({summary})")
        print(lines[-1], flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
