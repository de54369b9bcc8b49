"""IO-free protocol code: wire format, stream accumulation, SSE, guided checks, geometry, tasks.

Nothing in this package imports a network library, anyio or rich; it is pure functions and data
over bytes and dicts, so every rule of the wire can be tested without a server.
"""
