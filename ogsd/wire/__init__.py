"""The socket API's shape, shared by the server and its clients (stdlib and ogsd.core only)."""
