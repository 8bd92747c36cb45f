"""Quantised weight formats and the methods that fill them."""
