"""What the machine tells us: netlink, sleep, resolv.conf and resolved, the
network-environment test, auto-proxy, the network as one look sees it.
"""
