"""Mutation testing of the training bookkeeping: `python -m bench.mutation [module ...]`

Runs mutmut (configured in pyproject.toml's [tool.mutmut]) on each named module of
backprop/ (default: training, callbacks, saving, optimizers, layers), each against its own
fast subset of the tests (MODULES below; NumPy backend only), and prints every mutant that
survived and the score per module: killed / (killed + survived). Each module runs in its
own scratch copy of the project under build/mutation/<module>/, so runs never touch the
working tree and one module's results do not mix with another's.

Not part of CI: on two cores, optimizers and saving take some minutes each; training,
callbacks and layers take much longer (nearly every test reaches `fit`). A surviving mutant
gets a test, or a one-line reason in the README's Development section.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / "build" / "mutation"
COPIED = ("backends", "backprop", "tests", "examples", "pyproject.toml")

# module -> the tests that should kill its mutants (fast ones: mutmut runs, for each mutant,
# those of them that reach the mutated function)
MODULES: dict[str, tuple[str, ...]] = {
    "optimizers": (
        "tests/test_optimizers.py",
        "tests/test_backend_optimizers.py",
        "tests/test_saving.py",
    ),
    "saving": ("tests/test_saving.py", "tests/test_properties.py"),
    "callbacks": ("tests/test_training.py", "tests/test_trainer.py"),
    "training": ("tests/test_training.py", "tests/test_reliability.py", "tests/test_trainer.py"),
    "layers": ("tests/test_keras.py", "tests/test_backprop.py", "tests/test_saving.py"),
}
# how mutmut reports a mutant's fate (`mutmut results --all true`)
_RESULT = re.compile(r"^\s*(backprop\.\S+):\s*(.+?)\s*$")


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


def run(module: str, max_children: int) -> tuple[float, Counter[str], list[str]]:
    workdir = SCRATCH / module
    configure(module, workdir)
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)]
    subprocess.run(command, cwd=workdir, check=True, stdout=subprocess.DEVNULL)
    statuses = results(workdir)
    value, counts = score(statuses)
    survivors = sorted(f"{name} ({s})" for name, s in statuses.items() if s != "killed")
    return value, counts, survivors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mutation", description=__doc__)
    parser.add_argument("modules", nargs="*", help=f"any of {', '.join(MODULES)} (default: all)")
    parser.add_argument("--max-children", type=int, default=2, help="parallel test runs")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"modules must be among {', '.join(MODULES)}, got {', '.join(unknown)}")
    lines = []
    for module in args.modules or list(MODULES):
        value, counts, survivors = run(module, args.max_children)
        for name in survivors:
            print(f"{module}: {name}")
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        lines.append(f"backprop/{module}.py: {value:.1f}% killed ({summary})")
        print(lines[-1], flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
