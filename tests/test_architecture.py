"""The package keeps its shape: layers and forbidden imports (import-linter contracts in pyproject.toml),
a light Python API, one declaration per model setting, files small enough to read."""

import inspect
import os
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


def test_a_wheel_holds_every_module_and_config_and_a_pip_installed_mmcaption_finds_its_configs(tmp_path):
    """`pip install .` (or from an index) leaves no checkout: the wheel held no configs, so mmcaption-demo failed and
    the README's `--config configs/caption.yaml` named nothing."""
    import shutil
    import zipfile

    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ there
    for name in ("mmcaption", "configs"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"),
                    str(source)], check=True, capture_output=True)
    wheel = zipfile.ZipFile(next((tmp_path / "wheel").glob("mmcaption-*.whl")))
    shipped = {str(path.relative_to(REPO)) for path in (REPO / "mmcaption").rglob("*.py")}
    shipped |= {"mmcaption/" + str(path.relative_to(REPO)) for path in (REPO / "configs").rglob("*.yaml")}
    assert shipped - set(wheel.namelist()) == set()
    site, empty = tmp_path / "site", tmp_path / "empty"
    wheel.extractall(site)
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    found = subprocess.run([sys.executable, "-c", "import mmcaption; from mmcaption.demo.options import CONFIG_DIR; "
                            "print(mmcaption.__file__); print(CONFIG_DIR)"], cwd=empty, env=env, capture_output=True, text=True)
    assert found.stdout.split() == [str(site / "mmcaption" / "__init__.py"), str(site / "mmcaption" / "configs")]
    run = subprocess.run([sys.executable, "-m", "mmcaption", "fit", "--config", "configs/demo/caption.yaml", "--print_config"],
                         cwd=empty, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "seed_everything: 0" in run.stdout and "max_epochs: 3" in run.stdout
    assert (f"note: configs/demo/caption.yaml is not in this folder: the one installed with mmcaption is read "
            f"({site / 'mmcaption' / 'configs' / 'demo' / 'caption.yaml'})") in run.stderr
