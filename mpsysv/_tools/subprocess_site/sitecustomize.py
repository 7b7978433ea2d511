"""Run by ``site`` at the start of a Python program whose ``PYTHONPATH`` holds this
directory (``python -m mpsysv run`` puts it there for the programs it starts):
``mpsysv.patch()``, unless ``MPSYSV_NO_PATCH=1``; then the ``sitecustomize`` this one
shadows, if any. This directory leaves ``sys.path`` again, so the program sees the path it
would have had (``PYTHONPATH`` itself stays, for the program's own children).

It must never stop a program from starting: any failure is reported on stderr and the
program runs unpatched. It patches Python 3.9+ only, and keeps to Python 2's syntax (a
Python 2 child started under ``run`` must not print a SyntaxError).
"""

import os
import sys


def _activate():
    # type: () -> None
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    if sys.version_info >= (3, 9) and os.environ.get("MPSYSV_NO_PATCH") != "1":
        try:
            _patch(os.path.dirname(os.path.dirname(os.path.dirname(here))))
        except Exception as exc:  # noqa: BLE001 - the program must still start
            sys.stderr.write("mpsysv: Python child not patched: %r\n" % (exc,))
    if sys.version_info >= (3, 4):  # importlib.machinery.PathFinder.find_spec
        _run_shadowed_sitecustomize()


def _run_shadowed_sitecustomize():
    # type: () -> None
    # The import system returns whatever sys.modules["sitecustomize"] holds once this
    # module's code is done, so the shadowed module takes this one's place there.
    import importlib.machinery
    import importlib.util

    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", sys.path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


def _patch(root):
    # type: (str) -> None
    import importlib.util

    if importlib.util.find_spec("mpsysv") is None:
        # mpsysv is not installed for this interpreter (a checkout run with PYTHONPATH
        # that a child does not share): load the package this file belongs to.
        package = os.path.join(root, "mpsysv")
        spec = importlib.util.spec_from_file_location(
            "mpsysv", os.path.join(package, "__init__.py"),
            submodule_search_locations=[package])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["mpsysv"] = module
        spec.loader.exec_module(module)
    from mpsysv.patch import patch

    patch()


if __name__ == "sitecustomize":  # not when imported as part of the package
    _activate()
