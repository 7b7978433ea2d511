"""Instances as client code treats the stdlib's: attributes of its own, ``vars()``,
weak references, subclasses, and the stdlib's types in ``isinstance`` checks.

UltraDict stores ``created_by_ultra`` on a SharedMemory; ``logging.config`` accepts a
QueueHandler's queue only if it is a ``multiprocessing.queues.Queue`` (3.12+).
"""

import logging
import logging.config
import logging.handlers
import multiprocessing.queues
import pickle
import weakref

from .support import BACKENDS, CompatCase, install_cases
from .test_shared_memory import _unlink_quietly


class InstancesCase(CompatCase):

    def objects(self):
        """(label, instance) of every class the drop-in provides."""
        sm = self.SharedMemory(create=True, size=64)
        self.addCleanup(_dispose, sm)
        sl = self.ShareableList([1, "two", None])
        self.addCleanup(_dispose, sl.shm)
        manager = self.SharedMemoryManager()
        manager.start()
        self.addCleanup(manager.shutdown)
        return [("SharedMemory", sm), ("ShareableList", sl), ("Queue", self.Queue()),
                ("JoinableQueue", self.JoinableQueue()), ("SimpleQueue", self.SimpleQueue()),
                ("SharedMemoryManager", manager)]

    def test_instances_take_attributes_of_their_own_and_weak_references(self):
        for label, obj in self.objects():
            with self.subTest(label):
                obj.created_by_client = True
                self.assertIs(obj.created_by_client, True)
                self.assertIs(vars(obj)["created_by_client"], True)
                ref = weakref.ref(obj)
                self.assertIs(ref(), obj)

    def test_subclasses_of_every_class(self):
        sm_type, sl_type = type(self.SharedMemory), type(self.ShareableList)
        self.assertIs(sm_type, type)  # plain classes, as the stdlib's are
        self.assertIs(sl_type, type)

        Tagged = TAGGED[self.backend]
        sm = Tagged(create=True, size=16)
        self.addCleanup(_dispose, sm)
        sm.buf[0] = 5
        self.assertEqual((sm.tag, sm.buf[0]), ("mine", 5))
        again = pickle.loads(pickle.dumps(sm))
        self.addCleanup(again.close)
        self.assertIs(type(again), Tagged)
        self.assertEqual(again.buf[0], 5)

        class Named(self.ShareableList):
            pass

        sl = Named([1, 2])
        self.addCleanup(_dispose, sl.shm)
        self.assertEqual(list(sl), [1, 2])

        for factory in ("Queue", "JoinableQueue", "SimpleQueue"):
            with self.subTest(factory):
                base = type(getattr(self.ctx, factory)())
                sub = type(f"My{factory}", (base,), {"extra": 1})
                q = sub(ctx=self.ctx)
                self.addCleanup(q.close)
                q.put("x")
                self.assertEqual((q.get(), q.extra), ("x", 1))

    def test_queues_are_instances_of_the_stdlib_queue_types(self):
        q, jq, sq = self.Queue(), self.JoinableQueue(), self.SimpleQueue()
        self.assertIsInstance(q, multiprocessing.queues.Queue)
        self.assertIsInstance(jq, multiprocessing.queues.Queue)
        self.assertIsInstance(jq, multiprocessing.queues.JoinableQueue)
        self.assertIsInstance(jq, type(q))
        self.assertIsInstance(sq, multiprocessing.queues.SimpleQueue)
        self.assertNotIsInstance(q, multiprocessing.queues.JoinableQueue)

    def test_logging_config_accepts_a_queue_handler_on_a_multiprocessing_queue(self):
        q = self.Queue()
        name = f"compat.{self.backend}.{self.start_method}.queue-handler"
        try:
            _configure_queue_handler(name, q)
        except ValueError:
            if _accepts_a_stdlib_queue():
                raise
            self.skipTest("this Python's logging.config refuses the stdlib's own "
                          "multiprocessing.Queue too (3.12 before gh-119819)")
        logger = logging.getLogger(name)
        self.addCleanup(_drop_handlers, logger)
        logger.info("through the queue")
        record = q.get(timeout=10)
        self.assertEqual(record.getMessage(), "through the queue")


def _tagged(base):
    def __init__(self, *args, **kwargs):
        base.__init__(self, *args, **kwargs)
        self.tag = "mine"

    name = f"Tagged{base.__module__.split('.')[0].capitalize()}SharedMemory"
    cls = type(name, (base,), {"__init__": __init__, "__module__": __name__})
    globals()[name] = cls  # found by name when unpickled
    return cls


TAGGED = {backend.backend: _tagged(backend.SharedMemory) for backend in BACKENDS}


def _configure_queue_handler(logger_name, q):
    logging.config.dictConfig({
        "version": 1, "disable_existing_loggers": False,
        "handlers": {"qh": {"class": "logging.handlers.QueueHandler", "queue": q}},
        "loggers": {logger_name: {"handlers": ["qh"], "level": "INFO", "propagate": False}},
    })


def _accepts_a_stdlib_queue() -> bool:
    q = multiprocessing.queues.Queue(ctx=multiprocessing.get_context("fork"))
    logger = logging.getLogger("compat.probe.queue-handler")
    try:
        _configure_queue_handler(logger.name, q)
    except ValueError:
        return False
    finally:
        _drop_handlers(logger)
        q.close()
    return True


def _dispose(shm):
    shm.close()
    _unlink_quietly(shm)


def _drop_handlers(logger):
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


install_cases(globals())
