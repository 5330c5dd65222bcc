"""NetworkManager-openconnect: its connections over D-Bus, and the daemon keeping them
pointed at the choice.
"""
