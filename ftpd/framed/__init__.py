"""The framed protocol front end: frames, streams, sessions, server. No imports here.

The client imports ftpd.framed.protocol and ftpd.framed.streams, so this file stays empty.
"""
