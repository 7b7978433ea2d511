"""Switch mpsysv on in every Python process that imports this ``sitecustomize``.

``compat/clients.py`` puts this folder and the repository root on ``PYTHONPATH``;
``compat/cpython_suite.py --whole`` copies this file into a venv's site-packages (with
a ``.pth`` naming the repository). Either way the test runner and every child it starts
(fork, spawn, forkserver, plain ``subprocess`` children) import it at startup, so their
``multiprocessing`` queues and shared memory are mpsysv's from the first line. Only the
venv's copy reaches children started with ``-E`` or ``-I``; none reaches ``-S``.
"""

import mpsysv

mpsysv.patch()
