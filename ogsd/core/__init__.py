"""Pure domain logic: no sockets, no asyncio, no clock reads. Every rule takes `now`."""
