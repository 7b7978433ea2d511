"""The differences table and the known-bug list name cases that exist."""

import unittest

from . import test_context, test_pool, test_queues, test_shared_memory
from .differences import CLIENT_DIFFERENCES, CPYTHON_TESTS, DIFFERENCES, KNOWN_BUGS, markdown
from .support import CompatCase

CASES = {name: obj for module in (test_context, test_pool, test_queues, test_shared_memory)
         for name, obj in vars(module).items()
         if isinstance(obj, type) and issubclass(obj, CompatCase) and name.endswith("Case")}


class DifferencesTableTest(unittest.TestCase):
    def test_every_row_names_an_existing_case(self):
        rows = [d.case for d in DIFFERENCES.values()] + [case for case, _ in KNOWN_BUGS.values()]
        for row in rows:
            with self.subTest(row):
                case, method = row.split(".")
                self.assertIn(case, CASES)
                self.assertTrue(callable(getattr(CASES[case], method, None)))

    def test_every_cpython_test_names_a_row(self):
        for test, key in CPYTHON_TESTS.items():
            with self.subTest(test):
                self.assertIn(key, DIFFERENCES)

    def test_markdown_has_a_row_per_difference(self):
        self.assertEqual(len(markdown().splitlines()), len(DIFFERENCES) + 2)

    def test_every_client_test_listed_follows_from_a_difference_or_a_known_bug(self):
        rows = [item for tests in CLIENT_DIFFERENCES.values() for item in tests.items()]
        for test, (key, expects) in rows:
            with self.subTest(test):
                self.assertRegex(test, r"\w+\.test_\w+$|^exit$")
                self.assertIn(key, {**DIFFERENCES, **KNOWN_BUGS})
                self.assertTrue(expects)
