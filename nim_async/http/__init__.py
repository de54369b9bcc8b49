"""The HTTP boundary: the only package that imports httpx (and aiohttp, as httpx's transport).

It owns the transport, the one place httpx errors become nim_async errors, the retry policy and a
small client for a NIM or vLLM server's non-inference endpoints (health, models, version).
"""
