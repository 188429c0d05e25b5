"""Pure scheduling decisions: no I/O, no asyncio, time passed in as an argument."""
