"""Data sets, id maps, side features, splits and negative sampling."""
