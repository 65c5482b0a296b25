"""Who may do what: identities, permissions, signed sign-in tokens."""
