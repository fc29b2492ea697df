"""The ProjectVM guest agent: the program that runs inside every project VM.

It serves newline-delimited JSON-RPC 2.0 on a byte stream (its stdio, a serial port, or a TCP
socket behind a bearer token) and carries out commands and file operations confined to the
workspace. It imports nothing but the standard library, so it runs in any image that has a
``python3`` (3.8 or newer); drivers inject it as a zip application, never bake it into images.
"""

PROTOCOL_VERSION = 1
AGENT_VERSION = "0.1.0"

__all__ = ["AGENT_VERSION", "PROTOCOL_VERSION"]
