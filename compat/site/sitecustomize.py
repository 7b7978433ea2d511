"""Switch mpsysv on in every Python process started with this folder on ``PYTHONPATH``.

``compat/cpython_suite.py --whole`` and ``compat/clients.py`` put this folder and the
repository root on ``PYTHONPATH``: the test runner and every child it starts (fork,
spawn, forkserver, plain ``subprocess`` children) import ``sitecustomize`` at startup,
so their ``multiprocessing`` queues and shared memory are mpsysv's from the first line.
A child started with ``-E``, ``-I`` or ``-S`` ignores it and runs on the stdlib.
"""

import mpsysv

mpsysv.patch()
