"""Prints what a program can observe about how it was started (``__main__``'s attributes,
``sys.argv``, ``sys.path[0]``), then exits or raises as its arguments say: the runner's
tests compare ``python`` and ``python -m mpsysv run`` on it."""

import json
import sys


def describe():
    main = sys.modules["__main__"]
    spec = main.__spec__
    return {
        "attributes": {name: repr(getattr(main, name, "<absent>"))
                       for name in ("__name__", "__file__", "__package__", "__cached__")},
        "loader": type(getattr(main, "__loader__", None)).__name__,
        "spec": None if spec is None else [spec.name, spec.origin, spec.parent],
        "argv": sys.argv,
        "path0": sys.path[0],
    }


def explode():
    raise KeyError("from the program")


if __name__ == "__main__":
    print(json.dumps(describe(), sort_keys=True))
    if sys.argv[1:2] == ["raise"]:
        explode()
    if sys.argv[1:2] == ["exit"]:
        sys.exit(int(sys.argv[2]))
    if sys.argv[1:2] == ["interrupt"]:
        import atexit
        atexit.register(print, "atexit ran")
        raise KeyboardInterrupt
