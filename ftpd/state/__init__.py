"""What sessions (and later, nodes) share: the quota ledger and upload claims. No imports here."""
