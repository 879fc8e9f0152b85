"""Quotas, reservations, allocations and the placement solvers."""
