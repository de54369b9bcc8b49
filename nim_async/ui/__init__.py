"""The console layer: the only package besides :mod:`nim_async.cli` that imports rich.

Library code reports progress as plain events; the displays here draw them.
"""
