"""Deploying mailpipe to AWS: the resources stack, chalice deploy, and what Chalice cannot set."""
