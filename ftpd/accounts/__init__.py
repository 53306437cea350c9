"""Who may come in: the users file (passlib hashes) and the login brake. No imports here."""
