"""A regular install works from anywhere, as a new user would try it.

`pip install <checkout>` (not editable) into a fresh venv puts one package,
akvm, into site-packages; `akvm run` started in another directory builds the
bundled guest into a per-user cache (saying so on stderr) and boots it; and
a project elsewhere that uses the akvm_guest fixture passes.
"""
import os
import pathlib
import subprocess
import sys

import pexpect

from tests.conftest import needs_kvm

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROMPT = r"guest\(Core 0\)> "


@needs_kvm
def test_regular_install_boots_the_guest_and_serves_the_fixture(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(ROOT), "pytest"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    site = next((venv / "lib").glob("python3*/site-packages"))
    ours = sorted(p.name for p in site.iterdir()
                  if p.name in ("akvm", "vmm", "devices", "iommu", "guest"))
    assert ours == ["akvm"], f"top-level packages installed: {ours}"

    cache, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    env.pop("PYTHONPATH", None)
    child = pexpect.spawn(str(venv / "bin" / "akvm"), ["run"], cwd=str(elsewhere), env=env,
                          timeout=300)
    try:
        child.expect(rf"akvm: building the bundled guest kernel into {cache}/akvm/guest-\w+")
        child.expect(PROMPT)
        child.sendline("cores")
        child.expect(PROMPT)
        assert b"1 cores online" in child.before
        child.send("\x01x")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0

    project = tmp_path / "project"
    project.mkdir()
    (project / "test_uses_akvm.py").write_text(
        "def test_cores(akvm_guest):\n"
        "    assert '1 cores online' in akvm_guest.command('cores')\n")
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                       cwd=str(project), env=env, capture_output=True, text=True, timeout=300)
    assert "1 passed" in r.stdout, r.stdout + r.stderr
