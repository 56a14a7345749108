"""The package's metadata and the requirements file say the same thing."""
import tomllib

from tests.conftest import ROOT


def _requirements() -> set[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return {line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()}


def _dev_requirements() -> set[str]:
    lines = (ROOT / "requirements-dev.txt").read_text().splitlines()
    return {line.split("#")[0].strip() for line in lines
            if line.split("#")[0].strip() and not line.startswith("-r")}


def test_the_dev_extra_equals_requirements_dev_txt():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(project["optional-dependencies"]["dev"]) == _dev_requirements()


def test_pyproject_dependencies_equal_requirements_txt():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(project["dependencies"]) == _requirements()
    assert project["scripts"]["tld"] == "core.cli:main"
