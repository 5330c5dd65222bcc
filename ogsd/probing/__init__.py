"""A probe round and its probes: sockets, pacing, the little HTTP, the port-80 check,
the static proxy, a gateway's addresses, DNS queries by interface.
"""
