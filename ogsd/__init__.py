"""ogsd: optimal VPN gateway selection for Linux."""

__version__ = "0.1.0"
