# lit configuration: every test is a Python script that compiles kernels on the
# CPU for an NVIDIA target and prints IR; FileCheck (shipped in the triton
# wheel) checks what the compiler must produce.
import os
import sys

import lit.formats

config.name = "triton-dequant"
config.test_format = lit.formats.ShTest(execute_external=False)
config.suffixes = [".py"]
config.excludes = ["lit.cfg.py", "lit_utils.py", "__init__.py"]
config.test_source_root = os.path.dirname(__file__)

root = os.path.dirname(os.path.dirname(config.test_source_root))
import triton  # noqa: E402

filecheck = os.path.join(os.path.dirname(triton.__file__), "FileCheck")
config.substitutions.append(("%python", f"{sys.executable}"))
config.substitutions.append(("FileCheck", filecheck))
config.environment["PYTHONPATH"] = os.pathsep.join(
    [os.path.join(root, "python"), config.test_source_root, os.environ.get("PYTHONPATH", "")])
for var in ("HOME", "TRITON_CACHE_DIR", "TRITON_DEQUANT_LAYOUT", "PATH"):
    if var in os.environ:
        config.environment[var] = os.environ[var]
config.environment.pop("TRITON_INTERPRET", None)
