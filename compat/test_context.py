"""The context API: what ``multiprocessing.get_context()`` code relies on, on both backends."""

import multiprocessing
import multiprocessing.synchronize

from .support import TIMEOUT, CompatCase, install_cases, square


def use_context_objects(q, lock, event, counter):
    with lock:
        counter.value += 1
    event.set()
    q.put(("child", counter.value))


class ContextCase(CompatCase):
    START_METHODS = ("fork", "spawn", "forkserver")

    def test_get_start_method_names_the_method(self):
        self.assertEqual(self.ctx.get_start_method(), self.start_method)
        self.assertEqual(self.ctx.get_start_method(allow_none=True), self.start_method)

    def test_get_context_stays_on_the_backend(self):
        self.assertIs(self.ctx.get_context(), self.ctx)
        self.assertIs(self.ctx.get_context(None), self.ctx)
        for method in multiprocessing.get_all_start_methods():
            other = self.ctx.get_context(method)
            self.assertIs(other, self.get_context(method))
            self.assertEqual(other.get_start_method(), method)
            self.assertIs(type(other.Queue()), type(self.ctx.Queue()))

    def test_unknown_start_method_raises_value_error(self):
        with self.assertRaises(ValueError):
            self.ctx.get_context("teleport")
        with self.assertRaises(ValueError):
            self.get_context("teleport")

    def test_start_method_of_a_concrete_context_cannot_be_set(self):
        with self.assertRaises(ValueError):
            self.ctx.set_start_method("spawn")

    def test_everything_but_queues_is_the_stdlib_s(self):
        stdlib = multiprocessing.get_context(self.start_method)
        self.assertIs(self.ctx.Process, stdlib.Process)
        for factory in ("Lock", "RLock", "Semaphore", "BoundedSemaphore", "Event",
                        "Condition"):
            self.assertIs(type(getattr(self.ctx, factory)()), type(getattr(stdlib, factory)()))
        self.assertIs(type(self.ctx.Value("i", 1)), type(stdlib.Value("i", 1)))
        self.assertIs(self.ctx.reducer, stdlib.reducer)
        self.assertEqual(self.ctx.cpu_count(), stdlib.cpu_count())
        self.assertIs(self.ctx.current_process(), stdlib.current_process())

    def test_queues_and_primitives_work_together_in_a_child(self):
        q, lock, event = self.Queue(), self.ctx.Lock(), self.ctx.Event()
        counter = self.ctx.Value("i", 0)
        self.start_and_join(use_context_objects, q, lock, event, counter)
        self.assertTrue(event.wait(TIMEOUT))
        self.assertEqual(q.get(timeout=TIMEOUT), ("child", 1))

    def test_pool_of_the_context(self):
        with self.ctx.Pool(1) as pool:
            self.assertEqual(pool.map(square, [5]), [25])


class DefaultContextCase(CompatCase):
    def test_none_follows_the_stdlib_start_method(self):
        ctx = self.get_context(None)
        self.assertEqual(ctx.get_start_method(), multiprocessing.get_start_method())
        self.assertIs(ctx, self.get_context(ctx.get_start_method()))

    def test_manager_of_the_context(self):
        with self.ctx.Manager() as manager:
            shared = manager.list([1])
            shared.append(2)
            self.assertEqual(list(shared), [1, 2])
            self.assertIsInstance(self.ctx.Lock(), multiprocessing.synchronize.Lock)


install_cases(globals())
