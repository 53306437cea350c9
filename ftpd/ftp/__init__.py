"""The standard FTP/FTPS front end: command lines, sessions, data channels, server.

No imports here (the packages' ``__init__`` files stay empty: STYLE.md).
"""
