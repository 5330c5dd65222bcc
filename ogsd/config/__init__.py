"""Addresses as admins write them, AnyConnect profiles, ogsd.toml, the runtime layout, user ids."""
