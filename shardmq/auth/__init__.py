"""Authentication and authorisation: password hashes, users, permissions."""
