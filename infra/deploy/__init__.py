"""Steps of a `chalice deploy` that Chalice itself does not take, each read from infra/resources.yaml."""
