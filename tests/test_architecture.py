"""The package keeps its shape: layers and forbidden imports (import-linter contracts in pyproject.toml),
a light Python API, one declaration per model setting, files small enough to read."""

import inspect
import subprocess
import sys
from dataclasses import fields

from importlinter.cli import lint_imports

from mmcaption.model import MultimodalConfig
from mmcaption.module import MultimodalCaptioner

from .conftest import REPO

PACKAGE = REPO / "mmcaption"


def test_import_contracts_are_kept():
    # layers, no cycle, the model and the demo wing kept apart, the API free of Lightning and datasets
    assert lint_imports(config_filename=str(REPO / "pyproject.toml")) == 0


def test_the_python_api_imports_neither_lightning_nor_the_data_stack():
    probe = ("import sys; from mmcaption import Captioner; "
             "print(sorted(m for m in ('datasets', 'pyarrow', 'torchdata', 'lightning', 'pytorch_lightning') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_each_model_setting_is_declared_once():
    settings = {f.name for f in fields(MultimodalConfig)}
    parameters = set(inspect.signature(MultimodalCaptioner).parameters)
    assert "config" in parameters and not settings & parameters


def test_the_data_side_never_reaches_into_the_trainer_for_the_model():
    offenders = [str(path) for path in (PACKAGE / "data").rglob("*.py") if "lightning_module" in path.read_text()]
    assert offenders == []


def test_no_source_file_is_over_400_lines():
    lengths = {str(path.relative_to(REPO)): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    assert {path: n for path, n in lengths.items() if n > 400} == {}
