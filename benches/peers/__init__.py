"""Peer servers that tokenwire's SSE server is benchmarked against (see README.md in this folder)."""
