"""The directory ``python -m mpsysv run`` puts first on ``PYTHONPATH``: its
``sitecustomize`` module patches every Python program started with that environment."""
