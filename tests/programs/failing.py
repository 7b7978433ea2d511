"""Raises, so the runner's traceback and exit status can be checked."""

import sys


def explode():
    raise KeyError("from the program")


if __name__ == "__main__":
    print("argv0:", sys.argv[0])
    explode()
