"""`ogsd run`: wiring and lifecycle, the engine, resume, the socket API server,
sd_notify, metrics.
"""
