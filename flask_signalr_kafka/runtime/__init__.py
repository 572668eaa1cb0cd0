"""What the components run on: greenlets or threads (``concurrency``), the
bridge to an asyncio loop, SIGTERM and exit, the figures kept on hot paths,
the log of a failing loop.
"""
