import subprocess
import sys


def test_library_never_imports_ray():
    code = (
        "import pkgutil, sys, codeformer_core\n"
        "for m in pkgutil.walk_packages(codeformer_core.__path__, 'codeformer_core.'):\n"
        "    __import__(m.name)\n"
        "assert 'codeformer_core.weights' in sys.modules\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
