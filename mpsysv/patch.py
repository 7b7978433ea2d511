"""Switch an unmodified program's ``multiprocessing`` queues and shared memory to mpsysv.

``patch()`` replaces ``Queue``, ``SimpleQueue`` and ``JoinableQueue`` on every context
(and so the module-level functions) and ``SharedMemory``/``ShareableList`` in
``multiprocessing.shared_memory``; ``resource_tracker.register``/``unregister`` of a
"shared_memory" name reach mpsysv's tracker when the name is an mpsysv segment's (code
that untracks a segment it attached, the common workaround for the stdlib's tracker,
keeps working), and so does ``resource_tracker._CLEANUP_FUNCS['shared_memory']``
(the stdlib's ``shm_unlink``: it unlinks an mpsysv segment of that name). Fork children inherit the switch; spawn and
forkserver children turn it on before they import the main module. ``unpatch()``
puts back the very objects it replaced. Names a module imported before ``patch()``
(``from multiprocessing import Queue``) keep what they were bound to.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

__all__ = ["patch", "unpatch", "patched"]

_CONTEXT_NAMES = ("Queue", "SimpleQueue", "JoinableQueue", "Pool")
_SHARED_NAMES = ("SharedMemory", "ShareableList")
_MISSING = object()
_lock = threading.RLock()
# (namespace, attribute, original) for each replaced attribute, in replacement order;
# None while not patched.
_saved: Optional[List[Tuple[object, str, object]]] = None


def patch() -> None:
    """Make ``multiprocessing``'s queues and shared memory mpsysv's (idempotent)."""
    global _saved
    with _lock:
        if _saved is not None:
            return
        import multiprocessing
        import multiprocessing.shared_memory as stdlib_shared
        from multiprocessing import context, resource_tracker, spawn

        from . import shared
        from .context import _MpsysvContext

        saved: List[Tuple[object, str, object]] = []

        def replace(namespace: Any, name: str, value: object) -> None:
            saved.append((namespace, name, namespace.__dict__.get(name, _MISSING)))
            setattr(namespace, name, value)

        try:
            for name in _CONTEXT_NAMES:
                replace(context.BaseContext, name, _MpsysvContext.__dict__[name])
            # The module-level functions are bound methods of the default context,
            # copied into the module at import: copy the patched ones in the same way.
            for name in _CONTEXT_NAMES:
                replace(multiprocessing, name, getattr(context._default_context, name))
            for name in _SHARED_NAMES:
                replace(stdlib_shared, name, getattr(shared, name))
            register, unregister = _routing_tracker_calls(resource_tracker.register,
                                                          resource_tracker.unregister)
            replace(resource_tracker, "register", register)
            replace(resource_tracker, "unregister", unregister)
            cleanups: Dict[str, Any] = getattr(resource_tracker, "_CLEANUP_FUNCS")
            if "shared_memory" in cleanups:
                saved.append((cleanups, "shared_memory", cleanups["shared_memory"]))
                cleanups["shared_memory"] = _routing_cleanup(cleanups["shared_memory"])
            replace(spawn, "get_preparation_data",
                    _with_patch_marker(spawn.get_preparation_data))
        except BaseException:
            _restore(saved)
            raise
        _saved = saved


def unpatch() -> None:
    """Put back exactly what ``patch()`` replaced; a no-op when not patched."""
    global _saved
    with _lock:
        if _saved is None:
            return
        saved, _saved = _saved, None
        _restore(saved)


@contextlib.contextmanager
def patched() -> Iterator[None]:
    """``with patched():`` the body runs patched; the previous state comes back after."""
    with _lock:
        was_patched = _saved is not None
        patch()
    try:
        yield
    finally:
        if not was_patched:
            unpatch()


def _restore(saved: List[Tuple[object, str, object]]) -> None:
    for namespace, name, original in reversed(saved):
        if isinstance(namespace, dict):
            namespace[name] = original
        elif original is _MISSING:
            delattr(namespace, name)
        else:
            setattr(namespace, name, original)


_TrackerCall = Callable[[str, str], None]


def _routing_tracker_calls(register: _TrackerCall, unregister: _TrackerCall
                           ) -> Tuple[_TrackerCall, _TrackerCall]:
    """``resource_tracker.register``/``unregister`` that hand "shared_memory" names of
    mpsysv segments to mpsysv's tracker and everything else to the stdlib's (a segment
    of the stdlib's class made by code that kept it from before the patch)."""
    from .shared import track_by_name, untrack_by_name

    stdlib_names: Set[str] = set()  # "shared_memory" names this process gave the stdlib's tracker

    @functools.wraps(register)
    def register_(name: str, rtype: str) -> None:
        if rtype == "shared_memory":
            if track_by_name(name):
                return
            stdlib_names.add(name)
        register(name, rtype)

    @functools.wraps(unregister)
    def unregister_(name: str, rtype: str) -> None:
        if rtype == "shared_memory" and name not in stdlib_names and untrack_by_name(name):
            return
        stdlib_names.discard(name)
        unregister(name, rtype)

    return register_, unregister_


def _routing_cleanup(cleanup: Callable[[str], None]) -> Callable[[str], None]:
    """``resource_tracker._CLEANUP_FUNCS['shared_memory']`` that unlinks an mpsysv
    segment of that name, and hands any other name to the stdlib's function."""
    from .shared import unlink_by_name

    @functools.wraps(cleanup)
    def cleanup_(name: str) -> None:
        if not unlink_by_name(name):
            cleanup(name)
    return cleanup_


class _PatchMarker:
    """Rides in a spawn/forkserver child's preparation data: unpickling it there (before
    the child imports the main module) turns the patch on in the child."""

    def __reduce__(self) -> Tuple[Callable[[], None], Tuple[()]]:
        return _patch_in_child, ()


def _patch_in_child() -> None:
    patch()


def _with_patch_marker(original: Callable[[str], Dict[str, Any]]
                       ) -> Callable[[str], Dict[str, Any]]:
    @functools.wraps(original)
    def get_preparation_data(name: str) -> Dict[str, Any]:
        data = original(name)
        data["mpsysv_patch"] = _PatchMarker()
        return data
    return get_preparation_data
