"""ftpd: a multi-user file-transfer daemon (see README.md). Kept free of imports."""
