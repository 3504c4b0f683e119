"""Networked deployment on Flower: the same client update and round logic as the simulator,
with clients as separate processes on separate machines.

``client`` / ``node``: what a client does with each message (its state on its own disk);
``server``: the round logic over a transport; ``validate``: what the server accepts;
``client_app`` / ``server_app`` / ``records``: the Flower adapters; ``launcher``: a whole
federation on loopback (``fedrec deploy local``); ``credentials``: TLS and node keys;
``shards``: each client's data.
"""
