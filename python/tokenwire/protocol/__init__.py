"""Sans-I/O protocol code: bytes and strings in, events and bytes out. No asyncio, sockets or clocks here."""
