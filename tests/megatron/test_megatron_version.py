"""The Megatron plug-in says which megatron-core releases it was tested with: importing it under an older
release is an ImportError naming the tested range and the pip line, under a newer one a warning; the range is
the one setup.py's `megatron` extra admits. In every lane the installed release imports silently."""
import ast
import os
import subprocess
import sys
import warnings

import pytest

pytest.importorskip("megatron.core")
from mot_parallel.megatron.version import SETUP_SPEC, UntestedMegatronWarning, check_megatron_version  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("version", ["0.12.3", "0.15.3", "0.15.99", "0.9.0"])
def test_older_than_tested_is_refused(version):
    with pytest.raises(ImportError, match=r"0\.16\.x to 0\.19\.x.*found " + version.replace(".", r"\.")
                       + r".*pip install 'megatron-core>=0\.16,<0\.20'"):
        check_megatron_version(version)


@pytest.mark.parametrize("version", ["0.16.0", "0.16.1", "0.17.0", "0.19.2", "0.19.99", "0.19.0rc1",
                                     "0.16.0.dev0", "0.19.2+nv25.10"])
def test_tested_range_is_silent(version):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_megatron_version(version)


@pytest.mark.parametrize("version", ["0.20.0", "0.20.0rc0", "1.0.0", "0.21.3"])
def test_newer_than_tested_warns(version):
    with pytest.warns(UntestedMegatronWarning, match=f"megatron-core {version} is newer"):
        check_megatron_version(version)


def test_setup_py_admits_exactly_the_tested_range():
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    extras = next(n.value for n in ast.walk(tree) if isinstance(n, ast.keyword) and n.arg == "extras_require")
    megatron = ast.literal_eval(extras.values[[k.value for k in extras.keys].index("megatron")])
    assert megatron == [SETUP_SPEC]


def test_installed_release_imports_without_a_warning():
    """In a fresh interpreter (the import-time check runs once per process)."""
    code = ("import warnings\nwith warnings.catch_warnings(record=True) as seen:\n    warnings.simplefilter('always')\n"
            "    import mot_parallel.megatron\nprint([str(w.message) for w in seen if 'tested with' in str(w.message)])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("[]"), proc.stdout
