"""The admin command line: user subcommands and the users-file editor. No imports here."""
