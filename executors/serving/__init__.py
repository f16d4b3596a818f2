"""Serving: the model server around a user class and the router in front of it."""
