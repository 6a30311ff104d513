"""Development identity provider and pytest plugin (see issue 4)."""
