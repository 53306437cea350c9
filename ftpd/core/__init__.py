"""Protocol-neutral services: logins, a user's files, the runtime registry. No imports here."""
