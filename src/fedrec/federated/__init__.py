"""Federated learning for recommenders: the pure client update, server strategies, rounds.

Nothing here knows how clients are executed (in-process simulator or networked deployment).
"""
