"""Deployment: the Docker adapter (the only aiodocker user), the deployer and custom weights."""
