"""The default data folder in a non-editable install: ``$GENPRM_DATA_DIR``, else
``../shared/data`` from the current directory, never a path relative to the installed package.

The install is the packages copied into a folder that comes first on ``sys.path`` (what a wheel
puts in site-packages), run from a clone-like folder with ``../shared/data`` beside it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO

PROBE = """
import eval.processbench.data as data
from eval.cli import main
print(data.__file__)
print(data.DEFAULT_DATA_DIR)
main(["bon", "--help"])
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A site folder holding copies of the packages, and a work folder beside ``shared/data``."""
    root = tmp_path_factory.mktemp("install")
    for package in ("genprm", "eval"):
        shutil.copytree(REPO / package, root / "site" / package,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    (root / "shared" / "data" / "processbench").mkdir(parents=True)
    (root / "clone").mkdir()
    return root


def probe(installed: Path, **env: str) -> list[str]:
    environment = {key: value for key, value in os.environ.items() if key != "GENPRM_DATA_DIR"}
    environment |= {"PYTHONPATH": str(installed / "site"), "COLUMNS": "400", **env}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=installed / "clone", env=environment,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return result.stdout.splitlines()


def test_without_the_variable_the_default_is_shared_data_beside_the_current_folder(installed):
    module, default, *help_text = probe(installed)
    assert module.startswith(str(installed / "site"))  # the copy, not the editable checkout
    assert default == str(installed / "shared" / "data" / "processbench")
    assert str(installed / "shared" / "data" / "math500" / "test.jsonl") in "\n".join(help_text)


def test_genprm_data_dir_sets_every_default(installed, tmp_path):
    module, default, *help_text = probe(installed, GENPRM_DATA_DIR=str(tmp_path / "datasets"))
    assert default == str(tmp_path / "datasets" / "processbench")
    assert str(tmp_path / "datasets" / "math500" / "test.jsonl") in "\n".join(help_text)
