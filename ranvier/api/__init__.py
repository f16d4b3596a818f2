"""The API role: an HTTP API and a browser console over what the bus holds.

`ranvier run --role api` (and `ranvier up`) serves `/api/v1/...` in Myelin's admin-API shape,
the Rest webhook, server-sent events and the console's static assets from one port. Every
answer is read from the bus at request time (KV buckets and streams): nothing is cached, so
the API and `ranvier get axon` never disagree.
"""
