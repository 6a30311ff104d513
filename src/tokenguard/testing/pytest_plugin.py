"""pytest plugin: fixtures for the development identity provider."""
