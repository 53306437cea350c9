"""ftp_client: the client shell and batch runner for ftpd. Kept free of imports."""
