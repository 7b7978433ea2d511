"""The compatibility suite: the same cases against the stdlib and against mpsysv.

``support`` binds a case to a backend and a start method (as CPython's
``_test_multiprocessing`` binds its cases to a start method); ``differences`` is the
one table of deliberate differences; ``cpython_suite`` runs the interpreter's own
CPython tests with mpsysv patched in.
"""
