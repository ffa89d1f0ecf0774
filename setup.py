"""Ships the repository's `sql/` folder inside the package (as `pipeline/_sql/`), so a wheel, `pip install .`
or a git URL install can run its own queries. Everything else is declared in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithSql(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the repository's sql/ in place
        target = Path(self.build_lib) / "pipeline" / "_sql"
        shutil.copytree(Path(__file__).parent / "sql", target, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithSql})
