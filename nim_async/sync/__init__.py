"""The blocking facade: thin wrappers that run the async core on one shared loop thread."""
