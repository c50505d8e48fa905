"""Shared leaf contracts: errors, registries, stable hashing, and the weight-space spec.

Every other package may import ``core``; ``core`` imports none of them (and never prefect).
"""
