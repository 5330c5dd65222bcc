"""`ogsd run`: wiring and lifecycle, the round driver and the engine, the socket API server
and its handlers, sleep, resume and reload, sd_notify, metrics.
"""
