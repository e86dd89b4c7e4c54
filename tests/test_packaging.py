"""The wheel maps addons/, plugins/, tui/ and profiles/ under the one import package."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPED = {"addons": "contextwarden.addons", "plugins": "contextwarden.plugins", "tui": "contextwarden.tui",
          "profiles": "contextwarden.profiles", "src/contextwarden": "contextwarden"}


def declared_packages() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def test_every_package_folder_is_declared():
    missing = []
    for folder, pkg in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            name = ".".join((pkg, *rel))
            if name not in declared_packages() and "__pycache__" not in rel:
                missing.append(name)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_wheel_has_one_top_level_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("contextwarden-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"contextwarden", next(t for t in tops if t.endswith(".dist-info"))}, tops
    for must in ["contextwarden/addons/contextwarden.py", "contextwarden/addons/interceptor.py",
                 "contextwarden/plugins/compaction.py", "contextwarden/tui/__init__.py",
                 "contextwarden/profiles/observe-only.yaml", "contextwarden/profiles/claude-code.yaml",
                 "contextwarden/profiles/openai.yaml", "contextwarden/profiles/ollama.yaml"]:
        assert must in names, must
    eps = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(eps).decode()
    for stage in ["strip", "tagging", "memory", "clearing", "compaction", "budget"]:
        assert f"{stage} = contextwarden.plugins.{stage}" in text
