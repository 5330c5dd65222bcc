"""ogsctl and what it drives: the socket client, `connect` and its supervision of
openconnect, diag. Stdlib only (plus ogsd.core, ogsd.config.paths and ogsd.config.address).
"""
