"""Layer 5, the top: the command-line tools (inspection and removal, the ``run`` plugin
runner, the demo). They use the public API and the layers below."""
