"""Packaging: torch-free `import clippo.render`, and the built wheel works outside the repo."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_render_does_not_import_torch():
    code = (
        "import sys, clippo.render, clippo.fonts; "
        "r = clippo.render.UnifontRenderer(image_size=32); r('hi'); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_clippo_init_is_lazy():
    code = "import sys, clippo; print('torch' in sys.modules, 'timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


@pytest.mark.slow
def test_wheel_installs_and_imports_outside_repo(tmp_path):
    wheels, site, src = tmp_path / "wheels", tmp_path / "site", tmp_path / "src"
    # build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for name in ("clippo", "render", "eval", "fonts"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(src)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("clippo-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    # every source module is in the wheel (a sub-package missing from pyproject's list is not)
    folders = {
        "clippo": "clippo",
        "render": "clippo/render",
        "eval": "clippo/eval",
        "fonts": "clippo/fonts",
    }
    for folder, package in folders.items():
        for path in (ROOT / folder).rglob("*.py"):
            assert f"{package}/{path.relative_to(ROOT / folder).as_posix()}" in names, path
    assert "License-Expression: Apache-2.0" in metadata
    # package data: class names and the local metric modules travel in the wheel
    assert {
        "clippo/eval/data/class_names.json",
        "clippo/eval/data/LICENSE-class_names.txt",
    } <= names
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    code = (
        "import json, clippo, clippo.render, clippo.eval, clippo.fonts; "
        "p0, up = clippo.fonts.unifont_paths(); "
        "img = clippo.render.UnifontRenderer()('wheel'); "
        "from clippo.render.text_fonts import NOTO_FONTS; "
        "noto = [str(clippo.fonts.font_path(n)) for n in NOTO_FONTS]; "
        "shaped = clippo.render.TextRenderer(width=128, height=32)('\u0645\u0631\u062d\u0628\u0627'); "
        "print(json.dumps([clippo.render.__file__, str(p0), str(up), int((img == 0).sum()), "
        "noto, int((shaped != 127).any(-1).sum())]))"
    )
    # -S skips site (so the editable install's .pth finder never loads); the wheel's target dir
    # goes first, then plain site-packages for numpy and Pillow
    paths = [str(site), sysconfig.get_paths()["purelib"]]
    out = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys; sys.path[:0] = {paths!r}; {code}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    render_file, p0, up, ink, noto, shaped_ink = json.loads(out.stdout)
    for path in (render_file, p0, up, *noto):  # every bundled font read from the wheel
        assert path.startswith(str(site)), path
    assert Path(p0).stat().st_size > 900_000 and ink > 0
    assert shaped_ink > 50  # an Arabic word shaped by TextRenderer from the wheel's fonts
